"""Users' own images in the torchvision/timm ImageFolder layout.

- ``root/<class>/<image>``: one folder, split into train/val/test by the split seed.
- ``root/train/<class>/...`` with ``root/val/`` and/or ``root/test/`` (the ImageNet layout):
  the folders are the splits and the classes are the class folders inside them (never
  ``train``/``val``). With ``val/`` but no ``test/``, ``val/`` is the held-out split the run
  reports at the end (``test``, as ImageNet papers report their val set) and the per-epoch
  ``val`` is carved from ``train/`` by seed (``data.val_fraction``); with ``test/`` too, each
  folder is its own split.

Instance ids hash the file's path relative to ``root`` (``train/cat/001.png``), so they survive
files coming and going; the id -> path map is the bundle's ``sources``. Sets that fit
``params.memory_mb`` are decoded once into memory; larger ones are read file by file.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from kd_engine.data.registry import DATASETS
from kd_engine.data.augment import make_preset
from kd_engine.data.base import DataBundle, ItemInstanceDataset, cfg_get, stratified_split
from kd_engine.errors import ConfigError, DataError
from kd_engine.params import reject_unknown

IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff",
                  ".webp")
_ALLOWED_PARAMS = ("grayscale", "memory_mb")
SPLIT_FOLDERS = ("train", "val", "test")
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


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


def split_folders(root: Path) -> dict[str, Path]:
    """``{split: folder}`` when ``root`` holds ``train/`` (of class folders) plus ``val/`` or
    ``test/``; else {} (a single folder of classes)."""
    if not root.is_dir():
        return {}
    found = {name: root / name for name in SPLIT_FOLDERS if (root / name).is_dir()}
    if "train" not in found or len(found) < 2:
        return {}
    # split folders hold class folders; class folders that happen to be named train/val hold images
    has_classes = any(p.is_dir() and not p.name.startswith(".") for p in found["train"].iterdir())
    return found if has_classes else {}


class ImageFiles:
    """Files under a root, indexable like a torchvision dataset: item i is (PIL image, 0)."""

    def __init__(self, root: Path, rel_paths: list[str], grayscale: bool):
        self.root, self.rel_paths, self.grayscale = root, rel_paths, grayscale

    def __len__(self) -> int:
        return len(self.rel_paths)

    def __getitem__(self, i: int):
        path = self.root / self.rel_paths[i]
        try:
            with Image.open(path) as img:
                return img.convert("L" if self.grayscale else "RGB"), 0
        except Exception as e:  # PIL raises many types for bad files
            raise DataError(f"cannot read image {str(path)!r}: {e}") from None


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
    channels = 1 if grayscale else 3
    augment = cfg_get(data_cfg, "augment", "none")
    mean, std = _IMAGENET if augment == "imagenet" and not grayscale else ((0.0,), (1.0,))
    preset = make_preset(augment, size, mean, std, channels)

    root = Path(root_s).expanduser()
    folders = split_folders(root)
    if folders:  # the folders are the splits; classes come from train/
        classes, _ = scan_folder(folders["train"])
        items = {name: [(f"{name}/{rel}", label) for rel, label in _scan_split(folder, classes)]
                 for name, folder in folders.items()}
    else:
        classes, flat = scan_folder(root)
        items = {"all": flat}
    if len(classes) < 2:
        raise DataError(f"data.root: {str(root)!r} has only one class folder; need at least 2")
    rel_paths = [rel for split in items.values() for rel, _ in split]
    labels = np.asarray([label for split in items.values() for _, label in split], dtype=np.int64)
    ids = np.asarray([path_id(rel) for rel in rel_paths], dtype=np.int64)
    if len(set(ids.tolist())) != len(ids):
        raise DataError(f"data.root: instance id collision among files in {str(root)!r}")
    files = ImageFiles(root, rel_paths, grayscale)
    starts = np.cumsum([0] + [len(v) for v in items.values()])
    block = {name: np.arange(starts[k], starts[k + 1]) for k, name in enumerate(items)}
    val_fraction = float(cfg_get(data_cfg, "val_fraction", 0.15))
    if "all" in block:
        tr, va, te = stratified_split(labels, val_fraction, float(cfg_get(data_cfg, "test_fraction", 0.2)), seed)
        described = {"train": "split by seed", "val": "split by seed", "test": "split by seed"}
    else:
        train_pos = block["train"]
        if "test" in block:
            tr, va, te = train_pos, block.get("val", train_pos[:0]), block["test"]
            described = {"train": "train/", "val": "val/" if "val" in block else "none", "test": "test/"}
        else:  # ImageNet layout: val/ is the held-out split; the per-epoch val comes from train/
            cut_tr, cut_va, _ = stratified_split(labels[train_pos], val_fraction, 0.0, seed)
            tr, va, te = train_pos[cut_tr], train_pos[cut_va], block["val"]
            described = {"train": "train/ less val", "val": f"{val_fraction:g} of train/ by seed", "test": "val/"}
    if len(tr) == 0:
        raise DataError(f"data.root: {str(root)!r} has too few images ({len(labels)}) to train on")
    eval_t, display_t = preset.eval_transform(), preset.display_transform()

    def part(positions: np.ndarray, transform) -> ItemInstanceDataset:
        return ItemInstanceDataset(files, positions, labels[positions], ids[positions], transform, display_t,
                                   [rel_paths[p] for p in positions.tolist()], eval_t)

    parts = [part(tr, preset.train_transform()), part(va, eval_t), part(te, eval_t)]
    memory_mb = float(params.get("memory_mb", 2048))
    in_memory = len(labels) * channels * size * size * 4 / 2**20 <= memory_mb
    if in_memory:
        parts = [p.materialize() for p in parts]
        parts[0].augment = preset.batch if preset.name != "none" else None
    meta = {"source": str(root.resolve()), "splits": described, "augment": preset.name, "in_memory": in_memory,
            "paths": {int(i): rel for i, rel in zip(ids.tolist(), rel_paths)}}
    return DataBundle(train=parts[0], val=parts[1], test=parts[2], num_classes=len(classes),
                      input_shape=(channels, size, size), class_names=classes, name="imagefolder",
                      meta=dict(meta, split_seed=seed))


def _scan_split(folder: Path, classes: list[str]) -> list[tuple[str, int]]:
    """(path relative to ``folder``, label) of a split folder, labelled by train/'s classes."""
    names, found = scan_folder(folder)
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise DataError(f"data.root: {str(folder)!r} has class folders not in train/: {', '.join(unknown[:5])}")
    index = {name: classes.index(name) for name in names}
    return [(rel, index[names[label]]) for rel, label in found]
