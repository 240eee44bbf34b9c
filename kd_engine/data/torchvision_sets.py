"""Standard image datasets by name through torchvision: CIFAR-10/100, MNIST, Fashion-MNIST, SVHN,
STL-10, and ``fakedata`` (torchvision's FakeData: random images of a given shape, for CI).

The official test split is the run's ``test``; ``val`` is carved from the official training
split by the split seed (``data.val_fraction``), so ``data.test_fraction`` does not apply.
Instance ids are the index in the official training split, and ``len(train) + index`` for the
test split, so they never change between runs; the id -> source map names ``CIFAR100/train[12]``.

Nothing is downloaded unless ``data.download: true``: a missing dataset is one line naming the
folder expected under ``data.root``. Data that fits ``params.memory_mb`` is decoded once and held
as normalised tensors (the in-memory fast path, augmented per batch); larger data stays lazy and
is read item by item with the preset's per-item transforms.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from kd_engine.data.registry import DATASETS
from kd_engine.data.augment import make_preset
from kd_engine.data.base import DataBundle, ItemInstanceDataset, cfg_get, stratified_split
from kd_engine.errors import ConfigError, DataError
from kd_engine.params import reject_unknown

# name: (torchvision class, channels, native size, classes, mean, std, folder expected under root)
_CIFAR = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
SPECS: dict[str, tuple] = {
    "cifar10": ("CIFAR10", 3, 32, 10, *_CIFAR, "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", 3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "cifar-100-python"),
    "mnist": ("MNIST", 1, 28, 10, (0.1307,), (0.3081,), "MNIST/raw"),
    "fashionmnist": ("FashionMNIST", 1, 28, 10, (0.2860,), (0.3530,), "FashionMNIST/raw"),
    "svhn": ("SVHN", 3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), "train_32x32.mat, test_32x32.mat"),
    "stl10": ("STL10", 3, 96, 10, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), "stl10_binary"),
}
_PARAMS = ("memory_mb",)
_FAKE_PARAMS = ("memory_mb", "train_size", "test_size", "num_classes", "channels")


def _load_split(name: str, root: str, train: bool, download: bool):
    """The torchvision dataset (no transform) and its labels, or a DataError naming the folder."""
    import torchvision.datasets as tvd

    cls_name, *_, folder = SPECS[name]
    cls = getattr(tvd, cls_name)
    split_kw = {"split": "train" if train else "test"} if name in ("svhn", "stl10") else {"train": train}
    try:
        ds = cls(root=root, download=download, **split_kw)
    except RuntimeError as e:
        if download:
            raise DataError(f"data.root: could not download {cls_name} into {root!r}: {e}") from None
        raise DataError(f"data.root: {cls_name} not found in {root!r} (expected {folder} there); "
                        f"set data.download: true to fetch it, or unpack the official archive there") from None
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = ds.labels
    return ds, np.asarray(labels, dtype=np.int64)


def _bundle(name: str, pretty: str, sets, num_classes: int, class_names: list[str], channels: int,
            size: int, preset, data_cfg: Any, seed: int, memory_mb: float) -> DataBundle:
    """Splits: val carved from the official train set by seed; the official test set as test."""
    (train_ds, train_y), (test_ds, test_y) = sets
    val_fraction = float(cfg_get(data_cfg, "val_fraction", 0.15))
    tr, va, _ = stratified_split(train_y, val_fraction, 0.0, seed)
    eval_t, display_t, train_t = preset.eval_transform(), preset.display_transform(), preset.train_transform()
    offset = len(train_y)

    def split(ds, positions, labels, base_offset, kind, transform):
        ids = positions + base_offset
        names = [f"{pretty}/{kind}[{p}]" for p in positions.tolist()]
        return ItemInstanceDataset(ds, positions, labels[positions], ids, transform, display_t, names, eval_t)

    test_pos = np.arange(len(test_y))
    parts = [split(train_ds, tr, train_y, 0, "train", train_t), split(train_ds, va, train_y, 0, "train", eval_t),
             split(test_ds, test_pos, test_y, offset, "test", eval_t)]
    total_mb = (len(train_y) + len(test_y)) * channels * size * size * 4 / 2**20
    if total_mb <= memory_mb:  # small: decode once, augment per batch in memory
        parts = [p.materialize() for p in parts]
        parts[0].augment = preset.batch if preset.name != "none" else None
    return DataBundle(train=parts[0], val=parts[1], test=parts[2], num_classes=num_classes,
                      input_shape=(channels, size, size), class_names=class_names, name=name,
                      meta={"source": pretty, "split_seed": seed, "augment": preset.name,
                            "in_memory": total_mb <= memory_mb, "mean": list(preset.mean), "std": list(preset.std)})


def _size(data_cfg: Any, native: int) -> int:
    size = cfg_get(data_cfg, "image_size", native)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"data.image_size: must be a positive integer, got {size!r}")
    return size


def _make_builder(name: str):
    cls_name, channels, native, num_classes, mean, std, _ = SPECS[name]

    def build(data_cfg: Any, seed: int) -> DataBundle:
        params = dict(cfg_get(data_cfg, "params", {}) or {})
        reject_unknown(params, _PARAMS, "data.params", f"dataset {name}")
        root = cfg_get(data_cfg, "root")
        if not root:
            raise ConfigError(f"data.root: required for dataset {name} (the folder holding {SPECS[name][-1]})")
        download = bool(cfg_get(data_cfg, "download", False))
        size = _size(data_cfg, native)
        preset = make_preset(cfg_get(data_cfg, "augment", "none"), size, mean, std, channels)
        sets = [_load_split(name, str(root), train, download) for train in (True, False)]
        classes = list(getattr(sets[0][0], "classes", None) or [str(i) for i in range(num_classes)])
        return _bundle(name, cls_name, sets, num_classes, classes, channels, size, preset, data_cfg, seed,
                       float(params.get("memory_mb", 4096)))

    build.__name__ = f"build_{name}"
    build.__doc__ = f"torchvision {cls_name} under data.root (official test split as test)."
    return build


for _name in SPECS:
    DATASETS.register(_name)(_make_builder(_name))


@DATASETS.register("fakedata")
def build_fakedata(data_cfg: Any, seed: int) -> DataBundle:
    """torchvision FakeData: deterministic random images (image i is drawn from seed i), for
    running a real config's shapes without its data. ``params``: train_size, test_size,
    num_classes, channels; ``data.image_size`` sets H = W (default 32)."""
    import torchvision.datasets as tvd

    params = dict(cfg_get(data_cfg, "params", {}) or {})
    reject_unknown(params, _FAKE_PARAMS, "data.params", "dataset fakedata")
    counts = {k: params.get(k, d) for k, d in (("train_size", 256), ("test_size", 64), ("num_classes", 10),
                                               ("channels", 3))}
    for key, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"data.params.{key}: must be a positive integer, got {value!r}")
    size, channels, classes = _size(data_cfg, 32), counts["channels"], counts["num_classes"]
    sets = []
    for offset, count in ((0, counts["train_size"]), (counts["train_size"], counts["test_size"])):
        ds = tvd.FakeData(size=count, image_size=(channels, size, size), num_classes=classes,
                          random_offset=offset)
        labels = np.asarray([int(ds[i][1]) for i in range(count)], dtype=np.int64)
        sets.append((ds, labels))
    preset = make_preset(cfg_get(data_cfg, "augment", "none"), size, (0.5,) * channels, (0.5,) * channels, channels)
    return _bundle("fakedata", "FakeData", sets, classes, [str(i) for i in range(classes)], channels, size,
                   preset, data_cfg, seed, float(params.get("memory_mb", 4096)))
