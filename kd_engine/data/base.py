"""Dataset base types shared by every data source.

Every item carries a stable ``instance_id`` so per-instance records in the run store can be
joined across runs and epochs regardless of shuffling or split changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from kd_engine.errors import ConfigError, DataError


class InstanceDataset(Dataset):
    """Items are ``(x: float tensor, y: int64 scalar, instance_id: int64 scalar)``."""

    def images(self, ids: Sequence[int]) -> np.ndarray:  # pragma: no cover - interface
        """Images for the gallery: float32 in [0, 1], (N,H,W) or (N,H,W,3)."""
        raise NotImplementedError


def to_display(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Turn a (N,C,H,W) batch into displayable float32 images in [0, 1]."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    arr = arr.astype(np.float32, copy=True)
    if arr.ndim == 3:  # (C,H,W) single image -> batch of one
        arr = arr[None]
    lo = arr.min(axis=(1, 2, 3), keepdims=True) if arr.size else 0.0
    hi = arr.max(axis=(1, 2, 3), keepdims=True) if arr.size else 1.0
    # Data already in [0, 1] is shown as-is; anything else is rescaled per image.
    if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
        arr = (arr - lo) / np.maximum(hi - lo, 1e-8)
    arr = np.clip(arr, 0.0, 1.0)
    if arr.shape[1] == 1:
        return arr[:, 0]
    return np.transpose(arr[:, :3], (0, 2, 3, 1))


class TensorInstanceDataset(InstanceDataset):
    """In-memory dataset; the trainer indexes ``.x/.y/.ids`` directly instead of a DataLoader.

    ``images`` optionally holds display images aligned with ``x`` (e.g. un-normalised
    pixels); otherwise the gallery view is derived from ``x``.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
                 images: np.ndarray | None = None):
        if not (len(x) == len(y) == len(ids)):
            raise ValueError(f"length mismatch: x={len(x)} y={len(y)} ids={len(ids)}")
        self.x = torch.as_tensor(x, dtype=torch.float32)
        self.y = torch.as_tensor(y, dtype=torch.int64)
        self.ids = torch.as_tensor(ids, dtype=torch.int64)
        self._images = None if images is None else np.asarray(images, dtype=np.float32)
        self._pos: dict[int, int] | None = None
        self.source_names: list[str] | None = None  # id -> file path / dataset index, row-aligned
        self.augment = None  # training augmentation of a batch of rows (data.augment), or None

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], self.ids[i]

    def positions(self, ids: Sequence[int]) -> np.ndarray:
        """Row positions of the given instance ids; DataError for an id not in this split."""
        if self._pos is None:
            self._pos = {int(v): k for k, v in enumerate(self.ids.tolist())}
        try:
            return np.asarray([self._pos[int(i)] for i in ids], dtype=np.int64)
        except KeyError as e:
            raise DataError(f"instance id {e.args[0]} is not in this dataset") from None

    def images(self, ids: Sequence[int]) -> np.ndarray:
        pos = self.positions(ids)
        if self._images is not None:
            return self._images[pos]
        return to_display(self.x[torch.as_tensor(pos, dtype=torch.int64)])

    def subset(self, positions: Sequence[int] | np.ndarray) -> "TensorInstanceDataset":
        """A split of this dataset by row positions (ids are kept, not renumbered)."""
        p = torch.as_tensor(np.asarray(positions, dtype=np.int64))
        imgs = None if self._images is None else self._images[p.numpy()]
        out = TensorInstanceDataset(self.x[p], self.y[p], self.ids[p], imgs)
        if self.source_names is not None:
            out.source_names = [self.source_names[i] for i in p.tolist()]
        return out


@dataclass
class DataBundle:
    """Everything a run needs to know about its data."""

    train: InstanceDataset
    val: InstanceDataset
    test: InstanceDataset
    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: list[str]
    name: str
    meta: dict[str, Any] = field(default_factory=dict)

    def images(self, ids: Sequence[int]) -> np.ndarray:
        """Gallery images for ids drawn from any split, in the order given."""
        ids = [int(i) for i in ids]
        out: dict[int, np.ndarray] = {}
        for split in (self.train, self.val, self.test):
            sids = set(split.ids.tolist()) if hasattr(split, "ids") else set()
            want = [i for i in ids if i in sids and i not in out]
            if want:
                out.update(zip(want, split.images(want)))
        missing = [i for i in ids if i not in out]
        if missing:
            raise DataError(f"instance id {missing[0]} is not in dataset {self.name!r}")
        if not ids:
            return np.zeros((0,), dtype=np.float32)
        return np.stack([out[i] for i in ids])

    def sources(self, ids: Sequence[int]) -> list[str]:
        """Where each instance came from: its file path (relative to the data root) or
        ``Dataset/split[index]``; DataError when the dataset keeps no sources."""
        found: dict[int, str] = {}
        for split in (self.train, self.val, self.test):
            names = getattr(split, "source_names", None)
            if names is None:
                continue
            found.update(zip(split.ids.tolist(), names))
        if not found and "paths" in self.meta:
            found = {int(k): v for k, v in self.meta["paths"].items()}
        try:
            return [found[int(i)] for i in ids]
        except KeyError as e:
            raise DataError(f"dataset {self.name!r} names no source for instance id {e.args[0]}") from None


def stratified_split(labels, val_fraction: float, test_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, seed-deterministic train/val/test positions (sorted)."""
    labels = np.asarray(labels)
    n = len(labels)
    for name, f in (("data.val_fraction", val_fraction), ("data.test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise ConfigError(f"{name}: must be in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError("data.val_fraction + data.test_fraction must be below 1")
    idx = np.arange(n)

    def cut(pool: np.ndarray, frac_of_pool: float, rs: int):
        if frac_of_pool <= 0.0 or len(pool) == 0:
            return pool, pool[:0]
        strat = labels[pool]
        _, counts = np.unique(strat, return_counts=True)
        n_take = int(np.ceil(frac_of_pool * len(pool)))
        # Stratification needs >=2 members per class and room for every class in each part.
        ok = counts.min() >= 2 and n_take >= len(counts) and len(pool) - n_take >= len(counts)
        keep, take = train_test_split(pool, test_size=frac_of_pool, random_state=rs % 2**32,
                                      stratify=strat if ok else None)
        return keep, take

    try:
        rest, test = cut(idx, test_fraction, seed)
        val_of_rest = val_fraction / (1.0 - test_fraction) if val_fraction > 0 else 0.0
        train, val = cut(rest, val_of_rest, seed + 1)
    except ValueError as e:  # sklearn: too few samples for the requested fractions
        raise DataError(f"cannot split {n} samples into train/val/test: {e}") from None
    return np.sort(train), np.sort(val), np.sort(test)


def cfg_get(cfg: Any, name: str, default: Any = None) -> Any:
    """Read an attribute of a config-like object, treating None as 'use the default'."""
    value = getattr(cfg, name, None)
    return default if value is None else value


def split_bundle(full: TensorInstanceDataset, data_cfg: Any, seed: int, *, num_classes: int,
                 class_names: list[str], name: str, meta: dict | None = None) -> DataBundle:
    """Split an in-memory dataset into a stratified train/val/test ``DataBundle``."""
    tr, va, te = stratified_split(full.y.numpy(), float(cfg_get(data_cfg, "val_fraction", 0.15)),
                                  float(cfg_get(data_cfg, "test_fraction", 0.2)), seed)
    if len(tr) == 0:
        raise DataError(f"dataset {name!r} has too few samples ({len(full)}) to split")
    return DataBundle(train=full.subset(tr), val=full.subset(va), test=full.subset(te),
                      num_classes=num_classes, input_shape=tuple(full.x.shape[1:]),
                      class_names=list(class_names), name=name,
                      meta=dict(meta or {}, split_seed=seed))


class ItemInstanceDataset(InstanceDataset):
    """A split read item by item (a DataLoader can stream it): item ``i`` is
    ``(transform(base[positions[i]][0]), labels[i], ids[i])``.

    ``base`` is any indexable source of ``(image, anything)`` pairs: a torchvision dataset built
    without transforms, or a list of image files. ``ids`` and ``labels`` are known without reading
    images, so splits, per-instance records and the id -> source map cost nothing up front.
    ``materialize`` turns it into the in-memory ``TensorInstanceDataset`` (eval transform; the
    training augmentation then runs on batches, see ``augment_batch``)."""

    def __init__(self, base, positions, labels, ids, transform, display_transform, source_names,
                 eval_transform=None):
        self.base = base
        self.eval_transform = eval_transform or transform
        self.positions = np.asarray(positions, dtype=np.int64)
        self.y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
        self.transform, self.display_transform = transform, display_transform
        self.source_names = list(source_names)
        self.augment = None  # the in-memory batch augmentation is not used: items are augmented
        self._pos: dict[int, int] | None = None
        if not (len(self.positions) == len(self.y) == len(self.ids) == len(self.source_names)):
            raise ValueError("positions, labels, ids and source names must have one entry per item")

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int):
        image = self.base[int(self.positions[i])][0]
        return self.transform(image), self.y[i], self.ids[i]

    def eval_item(self, i: int):
        """Item ``i`` through the eval transform (no augmentation), e.g. for a fixed probe."""
        image = self.base[int(self.positions[i])][0]
        return self.eval_transform(image), self.y[i], self.ids[i]

    def _row(self, ids: Sequence[int]) -> list[int]:
        if self._pos is None:
            self._pos = {int(v): k for k, v in enumerate(self.ids.tolist())}
        try:
            return [self._pos[int(i)] for i in ids]
        except KeyError as e:
            raise DataError(f"instance id {e.args[0]} is not in this dataset") from None

    def images(self, ids: Sequence[int]) -> np.ndarray:
        rows = [self.display_transform(self.base[int(self.positions[r])][0]) for r in self._row(ids)]
        return to_display(torch.stack(rows)) if rows else np.zeros((0,), dtype=np.float32)

    def sources(self, ids: Sequence[int]) -> list[str]:
        return [self.source_names[r] for r in self._row(ids)]

    def materialize(self) -> TensorInstanceDataset:
        """Every item through the eval transform, held as one float32 tensor."""
        x = torch.stack([self.eval_transform(self.base[int(p)][0]) for p in self.positions]) if len(self) else None
        full = TensorInstanceDataset(x if x is not None else torch.zeros(0), self.y, self.ids)
        full.source_names = self.source_names
        return full


def augment_batch(dataset, x: torch.Tensor) -> torch.Tensor:
    """A training batch of an in-memory split with its augmentation (``data.augment``) applied;
    unchanged when it has none. Items read through ``__getitem__`` are augmented there instead."""
    augment = getattr(dataset, "augment", None)
    return x if augment is None else augment(x)


def source_map(bundle: "DataBundle") -> dict[str, str]:
    """``{instance id: source}`` (a file path relative to the data root, or ``Dataset/split[index]``)
    for every instance; {} when the data names no sources (e.g. digits: the id is the row)."""
    ids = [int(i) for split in (bundle.train, bundle.val, bundle.test) for i in split.ids.tolist()]
    try:
        names = bundle.sources(ids)
    except DataError:
        return {}
    return {str(i): name for i, name in zip(ids, names)}


def save_sources(writer, bundle: "DataBundle", meta_limit: int = 20_000) -> None:
    """Keep the id -> source map with the run: in its metadata (``sources``) when small, where
    the dashboard reads it; else as two aligned artifacts, ``instance_source_ids`` (int64) and
    ``instance_sources`` (UTF-8 bytes), so the metadata every page reads stays small."""
    sources = source_map(bundle)
    if not sources:
        return
    if len(sources) <= meta_limit:
        writer.set_meta(sources=sources)
        return
    writer.save_artifact("instance_source_ids", np.asarray([int(k) for k in sources], dtype=np.int64),
                         kind="sources", dtype="int64")
    writer.save_artifact("instance_sources", np.asarray([v.encode("utf-8") for v in sources.values()]),
                         kind="sources", dtype="S")
