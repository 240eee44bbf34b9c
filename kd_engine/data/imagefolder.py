"""Users' own images laid out as ``root/<class_name>/<image>`` (ImageFolder semantics).

Everything is loaded into memory at build time: the workbench targets small image sets, and
the in-memory fast path keeps the trainer simple.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from kd_engine.data import DATASETS
from kd_engine.data.base import DataBundle, TensorInstanceDataset, cfg_get, split_bundle
from kd_engine.errors import ConfigError, DataError
from kd_engine.params import reject_unknown

IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff",
                  ".webp")
_ALLOWED_PARAMS = ("grayscale",)


def path_id(rel_path: str) -> int:
    """Stable non-negative 63-bit id of a relative path; other files coming or going
    never change it, so per-instance history survives edits to the folder."""
    digest = hashlib.blake2b(rel_path.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


def scan_folder(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names (sorted sub-folders) and (relative posix path, label) for every image."""
    if not root.is_dir():
        raise DataError(f"data.root: image folder {str(root)!r} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"data.root: {str(root)!r} has no class sub-folders "
                        "(expected root/<class>/<image>)")
    items: list[tuple[str, int]] = []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).rglob("*")
                       if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS
                       and not p.name.startswith("."))
        if not files:
            raise DataError(f"data.root: class folder {str(root / cls)!r} has no images")
        items.extend((f.relative_to(root).as_posix(), label) for f in files)
    return classes, items


def load_image(path: Path, size: int, grayscale: bool) -> np.ndarray:
    """One image as float32 (C,H,W) in [0, 1]; any decode failure names the file."""
    try:
        with Image.open(path) as img:
            img = img.convert("L" if grayscale else "RGB")
            img = img.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except Exception as e:  # PIL raises many types for bad files
        raise DataError(f"cannot read image {str(path)!r}: {e}") from None
    return arr[None] if grayscale else np.transpose(arr, (2, 0, 1))


@DATASETS.register("imagefolder")
def build_imagefolder(data_cfg: Any, seed: int) -> DataBundle:
    root_s = cfg_get(data_cfg, "root")
    if not root_s:
        raise ConfigError("data.root: required for dataset imagefolder")
    size = cfg_get(data_cfg, "image_size")
    if size is None:
        raise ConfigError("data.image_size: required for dataset imagefolder (e.g. 32)")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"data.image_size: must be a positive integer, got {size!r}")
    params = dict(cfg_get(data_cfg, "params", {}) or {})
    reject_unknown(params, _ALLOWED_PARAMS, "data.params", "dataset imagefolder")
    grayscale = bool(params.get("grayscale", False))

    root = Path(root_s).expanduser()
    classes, items = scan_folder(root)
    if len(classes) < 2:
        raise DataError(f"data.root: {str(root)!r} has only one class folder; need at least 2")
    x = np.stack([load_image(root / rel, size, grayscale) for rel, _ in items])
    y = np.asarray([label for _, label in items], dtype=np.int64)
    ids = np.asarray([path_id(rel) for rel, _ in items], dtype=np.int64)
    if len(set(ids.tolist())) != len(ids):
        raise DataError(f"data.root: instance id collision among files in {str(root)!r}")
    display = x[:, 0] if grayscale else np.transpose(x, (0, 2, 3, 1))
    full = TensorInstanceDataset(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(ids),
                                 images=display)
    meta = {"source": str(root.resolve()),
            "paths": {int(i): rel for i, (rel, _) in zip(ids, items)}}
    return split_bundle(full, data_cfg, seed, num_classes=len(classes), class_names=classes,
                        name="imagefolder", meta=meta)
