"""Detection datasets in ``DATASETS``: ``scenes`` (procedural traffic) and ``coco`` (user files).

Both end in ``load_coco``: scenes are generated, written as COCO JSON + PNGs under
``<cache_dir>/scenes/<hash>/`` and read back through the loader, so the engine has one way in
for detection data and a malformed file always fails with the loader's one-line ``DataError``
before a run exists. Builders carry ``task = "detection"``; the trainer dispatches on it.
"""
from __future__ import annotations

import inspect
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kd_engine.config import stable_hash
from kd_engine.data.registry import DATASETS
from kd_engine.data.base import DataBundle, cfg_get
from kd_engine.data.detection.coco import DetectionDataset, load_coco, write_scenes
from kd_engine.data.detection.scenes import generate_scenes
from kd_engine.errors import ConfigError, DataError
from kd_engine.params import reject_unknown

SCENES_VERSION = 1
SPLITS = ("train", "val", "test")
ID_STRIDE = 1_000_000  # scene ids: train 1.., val 1M+1.., test 2M+1.. (unique, exact in float32)
_SCENE_KNOBS = [p for p in inspect.signature(generate_scenes).parameters
                if p not in ("n_images", "seed", "image_size", "first_image_id")]
_TRAIN_ONLY = ("wrong_class_rate", "box_jitter", "jitter_rate", "drop_box_rate")  # label noise


@dataclass
class DetectionBundle(DataBundle):
    """A ``DataBundle`` whose splits are ``DetectionDataset``s. ``num_classes`` counts the
    background (K + 1, what torchvision takes); ``class_names[0]`` is "background", so
    ``class_names[label]`` names a label; ``category_names`` are the K categories."""

    task = "detection"
    category_names: list[str] | None = None

    def splits(self) -> dict[str, DetectionDataset]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def images(self, ids: Sequence[int]) -> np.ndarray:
        out = []
        for i in ids:
            owner = next((s for s in self.splits().values() if int(i) in s._pos), None)
            if owner is None:
                raise DataError(f"image id {int(i)} is not in dataset {self.name!r}")
            out.append(owner.images([int(i)])[0])
        return np.stack(out) if out else np.zeros((0,), dtype=np.float32)


def dataset_task(name: str) -> str:
    """"detection" or "classification" for a registered dataset name."""
    return getattr(DATASETS.get(name, field="data.name"), "task", "classification")


def _detection(builder):
    builder.task = "detection"
    return builder


def _check_params(params: dict, allowed: Sequence[str], dataset: str) -> None:
    reject_unknown(params, allowed, "data.params", f"dataset {dataset}")


def _bundle(splits: dict[str, DetectionDataset], image_size: int, name: str,
            meta: dict) -> DetectionBundle:
    cats = splits["train"].category_names
    for split, ds in splits.items():
        if ds.category_names != cats:
            raise DataError(f"{ds.annotation_file}: categories {ds.category_names} differ from "
                            f"the training file's {cats}")
    seen: dict[int, str] = {}
    for split, ds in splits.items():
        for i in ds.ids:
            if i in seen and seen[i] != split:
                raise DataError(f"{ds.annotation_file}: image id {i} is also in the {seen[i]} "
                                "split; the run store keys images by id, so ids must be unique")
            seen[i] = split
    if not len(splits["train"]):
        raise DataError(f"{splits['train'].annotation_file}: no training images")
    return DetectionBundle(train=splits["train"], val=splits["val"], test=splits["test"],
                           num_classes=len(cats) + 1, input_shape=(3, image_size, image_size),
                           class_names=["background", *cats], name=name, meta=meta,
                           category_names=list(cats))


# -- scenes ------------------------------------------------------------------------------------
def _scene_settings(data_cfg: Any) -> dict[str, Any]:
    params = dict(cfg_get(data_cfg, "params", {}) or {})
    _check_params(params, ["n_train", "n_val", "n_test", "image_size", *_SCENE_KNOBS], "scenes")
    size = params.pop("image_size", cfg_get(data_cfg, "image_size", 128))
    counts = {s: params.pop(f"n_{s}", d) for s, d in zip(SPLITS, (1000, 200, 200))}
    for key, n in counts.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < (1 if key == "train" else 0):
            raise ConfigError(f"data.params.n_{key}: must be a whole number >= "
                              f"{1 if key == 'train' else 0}, got {n!r}")
        if n >= ID_STRIDE:
            raise ConfigError(f"data.params.n_{key}: at most {ID_STRIDE - 1} images per split")
    for key in ("objects", "clutter", "class_probs"):  # YAML lists -> the tuples the generator takes
        if isinstance(params.get(key), list):
            params[key] = tuple(params[key])
    return {"image_size": size, "counts": counts, "knobs": params}


def _write_split(out: Path, split: str, n: int, seed: int, size: int, knobs: dict) -> None:
    if split != "train":  # label noise belongs to the training labels only (AID's label-noise setting)
        knobs = {k: v for k, v in knobs.items() if k not in _TRAIN_ONLY}
    # Each split draws from its own seed: train, val and test scenes never share a generator.
    split_seed = int(np.random.SeedSequence([seed, SPLITS.index(split)]).generate_state(1)[0])
    try:
        scenes = generate_scenes(max(n, 1), seed=split_seed, image_size=size,
                                 first_image_id=1 + SPLITS.index(split) * ID_STRIDE, **knobs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"data.params: invalid scene setting: {e}") from None
    if n == 0:  # an empty split: keep the categories, drop the placeholder image
        scenes.coco.update(images=[], annotations=[])
        scenes.coco_clean.update(images=[], annotations=[])
        scenes.images = scenes.images[:0]
    write_scenes(scenes, out / split)


def scenes_dir(data_cfg: Any, seed: int, cache_dir: str | Path = ".kdw_cache") -> Path:
    """Where the scenes of this data config and split seed are cached."""
    s = _scene_settings(data_cfg)
    key = stable_hash({"version": SCENES_VERSION, "seed": seed, **s})
    return Path(cache_dir) / "scenes" / key


def _noise_counts(clean_file: Path, ids: Sequence[int]) -> dict[int, int]:
    """Image id -> annotations the generator corrupted (wrong class, jittered or dropped), read
    from the clean file's ``noise`` field; what records use to ask whether AID finds them."""
    counts = dict.fromkeys((int(i) for i in ids), 0)
    if clean_file.is_file():
        for a in json.loads(clean_file.read_text()).get("annotations", []):
            if a.get("noise", "none") != "none" and int(a["image_id"]) in counts:
                counts[int(a["image_id"])] += 1
    return counts


@DATASETS.register("scenes")
@_detection
def build_scenes(data_cfg: Any, seed: int, cache_dir: str | Path = ".kdw_cache") -> DetectionBundle:
    """Procedural traffic scenes (car, pedestrian, cyclist), generated once per (settings, split
    seed) into the cache; params: n_train/n_val/n_test, image_size and the generator's knobs
    (objects, clutter, occlusion, wrong_class_rate, box_jitter, drop_box_rate, ...)."""
    s = _scene_settings(data_cfg)
    target = scenes_dir(data_cfg, seed, cache_dir)
    if not (target / "done").is_file():
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}")
        for split in SPLITS:
            _write_split(tmp, split, s["counts"][split], seed, s["image_size"], s["knobs"])
        (tmp / "done").write_text("ok\n")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, target)
        except OSError:  # another process wrote the same scenes first: theirs are identical
            shutil.rmtree(tmp, ignore_errors=True)
    splits = {split: load_coco(target / split / "annotations.json", target / split / "images")
              for split in SPLITS}
    for split, ds in splits.items():
        ds.noise = _noise_counts(target / split / "annotations_clean.json", ds.ids)
    return _bundle(splits, s["image_size"], "scenes", {"split_seed": seed, "root": str(target)})


# -- user COCO files ---------------------------------------------------------------------------
def _split_by_fraction(full: DetectionDataset, data_cfg: Any, seed: int) -> dict:
    val_f = float(cfg_get(data_cfg, "val_fraction", 0.15))
    test_f = float(cfg_get(data_cfg, "test_fraction", 0.2))
    ids = np.random.default_rng(seed).permutation(np.asarray(full.ids))
    n_test, n_val = int(round(test_f * len(ids))), int(round(val_f * len(ids)))
    parts = {"test": ids[:n_test], "val": ids[n_test:n_test + n_val], "train": ids[n_test + n_val:]}
    return {k: full.subset(sorted(int(i) for i in v)) for k, v in parts.items()}


def _image_size(data_cfg: Any, splits: dict[str, DetectionDataset]) -> int:
    size = cfg_get(data_cfg, "image_size")
    if size:
        return int(size)
    sizes = {(ds.coco.imgs[i]["width"], ds.coco.imgs[i]["height"]) for ds in splits.values()
             for i in ds.ids}
    if not sizes:
        raise DataError(f"{splits['train'].annotation_file}: no images")
    if len(sizes) != 1 or len(set(next(iter(sizes)))) != 1:
        raise ConfigError("data.image_size: the images are not all square and of one size; set "
                          "the size detectors resize them to (min_size = max_size)")
    return next(iter(sizes))[0]


@DATASETS.register("coco")
@_detection
def build_coco(data_cfg: Any, seed: int, cache_dir: str | Path = ".kdw_cache") -> DetectionBundle:
    """COCO files under ``data.root``. Either one file split by data.val_fraction/test_fraction
    (params ``annotations``, ``images``) or one file per split (params ``train``, ``val``,
    ``test``, each ``{annotations: FILE, images: DIR}``); paths are relative to data.root."""
    root = Path(cfg_get(data_cfg, "root", "."))
    params = dict(cfg_get(data_cfg, "params", {}) or {})
    _check_params(params, ["annotations", "images", *SPLITS], "coco")

    def load(entry: Any, field: str) -> DetectionDataset:
        if not isinstance(entry, dict) or "annotations" not in entry or set(entry) - {
                "annotations", "images"}:
            raise ConfigError(f"{field}: expected {{annotations: FILE, images: DIR}}, got {entry!r}")
        return load_coco(root / entry["annotations"], root / entry.get("images", "images"))

    if "annotations" in params:
        if any(s in params for s in SPLITS):
            raise ConfigError("data.params: give either annotations/images or train/val/test, not both")
        full = load({k: params[k] for k in ("annotations", "images") if k in params}, "data.params")
        splits = _split_by_fraction(full, data_cfg, seed)
    elif "train" in params:
        splits = {s: load(params[s], f"data.params.{s}") for s in SPLITS if s in params}
        for s in SPLITS:  # a missing split is empty, not a crash
            splits.setdefault(s, splits["train"].subset([]))
    else:
        raise ConfigError("data.params: the coco dataset needs 'annotations' (one file split by "
                          "fractions) or 'train' (and optionally 'val', 'test') entries")
    return _bundle(splits, _image_size(data_cfg, splits), "coco",
                   {"split_seed": seed, "root": str(root)})


__all__ = ["DetectionBundle", "build_coco", "build_scenes", "dataset_task", "scenes_dir"]
