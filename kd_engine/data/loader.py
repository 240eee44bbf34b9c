"""Reading a split batch by batch: the in-memory fast path and the streaming DataLoader path.

Both paths share one plan of an epoch (`epoch_plan`): the order is a permutation drawn from
`epoch_generator(seed, epoch)`; under DDP it is padded to a multiple of the world size,
each rank takes every ``world``-th position, and the padding is marked ``keep = False`` so it is
trained on (every rank must step the same number of times) but never recorded. The batches are
the same near-equal chunks on both paths, so a split gives the same batches whether it is held in
memory or streamed.

A split without ``.x`` (an `ItemInstanceDataset`: torchvision sets and ImageFolder too large for
``params.memory_mb``, or a user's dataset wrapped by `stream_dataset`) is read through a
``torch.utils.data.DataLoader`` with ``data.loader``'s workers, pinned memory, persistent workers
and prefetch. Exact resume needs the per-item augmentation to depend only on (seed, epoch, item),
never on which worker read the item or how many workers there are: each item is read under its
own seed (`item_seed`) for torch's, NumPy's and Python's global generators (torch's restored
afterwards, so the training's random stream is left as it was). The same holds with persistent
workers, which a per-worker ``worker_init_fn`` seed could not give (it runs once, not each epoch).

Evaluation and the feature probe read lazy splits through ``eval_item`` (the eval transform, no
augmentation), through a DataLoader too.
"""
from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from kd_engine.data.base import ItemInstanceDataset, cfg_get
from kd_engine.errors import DataError


@dataclass(frozen=True)
class LoaderSettings:
    """``data.loader``: how a streamed split is read (none of it changes the batches or the
    augmentation, only how fast they come)."""

    num_workers: int = 0
    pin_memory: bool = True  # only where the device is a GPU
    persistent_workers: bool = True  # keep the workers between epochs (only with workers)
    prefetch_factor: int = 2  # batches each worker reads ahead (only with workers)

    @classmethod
    def of(cls, data_cfg: Any) -> "LoaderSettings":
        section = cfg_get(data_cfg, "loader")
        if section is None:
            return cls()
        get = (lambda k: section.get(k)) if isinstance(section, dict) else (lambda k: getattr(section, k, None))
        values = {k: get(k) for k in ("num_workers", "pin_memory", "persistent_workers", "prefetch_factor")}
        return cls(**{k: v for k, v in values.items() if v is not None})

    def kwargs(self, device: torch.device | None) -> dict[str, Any]:
        """DataLoader keyword arguments (the worker-only ones only with workers)."""
        out: dict[str, Any] = {"num_workers": self.num_workers,
                               "pin_memory": bool(self.pin_memory and device is not None and device.type == "cuda")}
        if self.num_workers > 0:
            out.update(persistent_workers=self.persistent_workers, prefetch_factor=self.prefetch_factor,
                       worker_init_fn=_worker_init)
        return out


def in_memory(split) -> bool:
    """True for a split held as tensors (``.x``), read by slicing instead of a DataLoader."""
    return hasattr(split, "x")


def require_in_memory(split, who: str) -> None:
    """One clear line for code that needs a split's images as one tensor (``split.x``)."""
    if not in_memory(split):
        raise DataError(f"{who} needs the training images in memory (split.x), but this split is streamed "
                        f"item by item ({len(split)} items); raise data.params.memory_mb so the dataset is "
                        "loaded into memory, or use a method that reads batches")


# -- the plan of an epoch --------------------------------------------------------------------------
def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Data order depends only on (seed, epoch), so a resumed run sees the same batches."""
    generator = torch.Generator()
    generator.manual_seed(seed * 100_003 + epoch)
    return generator


def epoch_plan(n: int, seed: int, epoch: int, batch_size: int, rank: int = 0,
               world: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's batches of one epoch as (positions, keep): a permutation from
    ``epoch_generator(seed, epoch)``, padded (keep False) to a multiple of ``world`` under DDP,
    strided by rank, cut into ``ceil(len / batch_size)`` near-equal chunks."""
    order = torch.randperm(n, generator=epoch_generator(seed, epoch))
    if world > 1:  # pad so every rank gets the same number of batches; padding is not recorded
        order = torch.cat([order, order[: (-n) % world]])
        real = torch.arange(len(order)) < n
        order, real = order[rank::world], real[rank::world]
    else:
        real = torch.ones(n, dtype=torch.bool)
    count = max(1, math.ceil(len(order) / batch_size))
    return list(zip(torch.tensor_split(order, count), torch.tensor_split(real, count)))


def item_seed(seed: int, epoch: int, position: int) -> int:
    """The seed a training item is read (augmented) under: a function of (seed, epoch, position)
    only, mixed so that neighbouring items and epochs get unrelated streams."""
    value = (seed * 100_003 + epoch) * 0x9E3779B97F4A7C15 + position * 0xBF58476D1CE4E5B9
    value ^= value >> 31
    return value % 2**63


@contextlib.contextmanager
def seeded(seed: int):
    """Run the body with torch's CPU generator seeded from ``seed``, then put its state back (the
    training's own stream, which checkpoints carry, is left untouched). NumPy's and Python's
    global generators, which users' transforms may draw from, are seeded too but left so:
    restoring NumPy's state costs 0.1-0.5 ms an item, the engine draws from neither while it
    trains, and their state after an epoch is then a function of (seed, epoch) as well."""
    torch_state = torch.default_generator.get_state()
    torch.default_generator.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        torch.default_generator.set_state(torch_state)


def _worker_init(worker_id: int) -> None:
    """Workers read one item at a time: one thread each, so workers do not fight over the cores."""
    torch.set_num_threads(1)


class _TrainItems(Dataset):
    """A lazy split keyed by (position, keep, seed): item = (x, y, id, keep), read and augmented
    under the item's own seed."""

    def __init__(self, split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key):
        position, keep, seed = key
        with seeded(seed):
            x, y, i = self.split[position]
        return x, torch.as_tensor(y, dtype=torch.int64), torch.as_tensor(i, dtype=torch.int64), keep


class _PlanBatches(Sampler):
    """The batches of `epoch_plan` as lists of `_TrainItems` keys; ``epoch`` is set before each
    pass (the DataLoader reads its batch sampler afresh every epoch, persistent workers or not)."""

    def __init__(self, n: int, seed: int, batch_size: int, rank: int, world: int):
        self.n, self.seed, self.batch_size, self.rank, self.world = n, seed, batch_size, rank, world
        self.epoch = 0

    def plan(self):
        return epoch_plan(self.n, self.seed, self.epoch, self.batch_size, self.rank, self.world)

    def __iter__(self) -> Iterator[list[tuple[int, bool, int]]]:
        for positions, keep in self.plan():
            yield [(p, k, item_seed(self.seed, self.epoch, p))
                   for p, k in zip(positions.tolist(), keep.tolist())]

    def __len__(self) -> int:
        return max(1, math.ceil(math.ceil(self.n / self.world) / self.batch_size))


class _EvalItems(Dataset):
    """A lazy split read through its eval transform (``eval_item``): no augmentation."""

    def __init__(self, split, count: int | None = None):
        self.split, self.count = split, len(split) if count is None else min(count, len(split))
        self.read = getattr(split, "eval_item", split.__getitem__)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int):
        x, y, ids = self.read(i)
        return x, torch.as_tensor(y, dtype=torch.int64), torch.as_tensor(ids, dtype=torch.int64)


class Loaders:
    """The DataLoaders of one run: one per streamed split for training (kept across epochs, so
    persistent workers persist) and one per split for evaluation."""

    def __init__(self, settings: LoaderSettings | None = None, seed: int = 0,
                 device: torch.device | None = None, rank: int = 0, world: int = 1):
        self.settings = settings or LoaderSettings()
        self.seed, self.device, self.rank, self.world = seed, device, rank, world
        self._train: dict[tuple[int, int], DataLoader] = {}
        self._eval: dict[tuple[int, int, int | None], DataLoader] = {}

    def _generator(self) -> torch.Generator:
        # the workers' base seed is drawn from this, not from the global generator, so streaming
        # leaves the training's random stream alone (the items are seeded by `item_seed` anyway)
        return torch.Generator().manual_seed(self.seed)

    def train(self, split, epoch: int, batch_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """(x, y, ids, keep) batches of a lazy split for ``epoch``, this rank's share."""
        key = (id(split), batch_size)
        if key not in self._train:
            sampler = _PlanBatches(len(split), self.seed, batch_size, self.rank, self.world)
            self._train[key] = DataLoader(_TrainItems(split), batch_sampler=sampler, generator=self._generator(),
                                          **self.settings.kwargs(self.device))
        loader = self._train[key]
        loader.batch_sampler.epoch = epoch
        yield from loader

    def eval(self, split, batch_size: int, count: int | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        """(x, y, ids) batches of the first ``count`` items (all by default) of a split, in
        order, through the eval transform."""
        if in_memory(split):
            stop = len(split) if count is None else min(count, len(split))
            for start in range(0, stop, batch_size):
                end = min(stop, start + batch_size)
                yield split.x[start:end], split.y[start:end], split.ids[start:end]
            return
        key = (id(split), batch_size, count)
        if key not in self._eval:
            items = _EvalItems(split, count)
            if len(items) == 0:
                return
            # Evaluation passes are few: their workers end with each pass instead of idling (and a
            # fork of this process never inherits live evaluation workers). A pass of no more
            # batches than the workers would prefetch at once is read here: starting them costs
            # more than they save.
            s = self.settings
            workers = s.num_workers if math.ceil(len(items) / batch_size) > s.num_workers * s.prefetch_factor else 0
            settings = LoaderSettings(workers, s.pin_memory, False, s.prefetch_factor)
            self._eval[key] = DataLoader(items, batch_size=batch_size, shuffle=False, generator=self._generator(),
                                         **settings.kwargs(self.device))
        yield from self._eval[key]

    def close(self) -> None:
        """End the persistent workers now (not whenever the garbage collector gets to them: a
        later fork, e.g. the next run's workers, must not inherit them) and drop the loaders."""
        for loader in self._train.values():
            iterator = getattr(loader, "_iterator", None)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
            loader._iterator = None
        self._train.clear()
        self._eval.clear()


# -- users' datasets ---------------------------------------------------------------------------
class _Identity:
    def __call__(self, x):
        return x


def stream_dataset(dataset, *, labels: Sequence[int] | None = None, ids: Sequence[int] | None = None,
                   transform=None, eval_transform=None, display_transform=None,
                   name: str = "data", positions: Sequence[int] | None = None) -> ItemInstanceDataset:
    """Wrap any map-style dataset whose items are ``(input, label, ...)`` as a split the trainer
    streams through a DataLoader (`ItemInstanceDataset`).

    ``labels`` defaults to ``dataset.targets`` (or ``.labels``) when the dataset has them, else
    each item is read once for its label. ``ids`` default to the item index (stable as long as
    the dataset's order is); ``positions`` picks a subset. The id -> source map names
    ``name[index]``. ``transform`` (training) and ``eval_transform`` apply to the item's input;
    both default to none (the dataset's own transform, if any, runs first)."""
    n = len(dataset)
    positions = np.arange(n, dtype=np.int64) if positions is None else np.asarray(positions, dtype=np.int64)
    if labels is None:
        known = getattr(dataset, "targets", None)
        known = getattr(dataset, "labels", None) if known is None else known
        if known is not None:
            labels = np.asarray(known, dtype=np.int64)[positions]
        else:
            labels = [int(dataset[int(p)][1]) for p in positions]
    labels = np.asarray(labels, dtype=np.int64)
    ids = positions.copy() if ids is None else np.asarray(ids, dtype=np.int64)
    if len(labels) != len(positions) or len(ids) != len(positions):
        raise DataError(f"{name}: labels ({len(labels)}) and ids ({len(ids)}) must have one entry per item "
                        f"({len(positions)})")
    if len(np.unique(ids)) != len(ids):
        raise DataError(f"{name}: instance ids must be unique")
    train_t = transform or _Identity()
    eval_t = eval_transform or _Identity()  # never the training transform: evaluation is not augmented
    names = [f"{name}[{p}]" for p in positions.tolist()]
    return ItemInstanceDataset(dataset, positions, labels, ids, train_t, display_transform or eval_t, names,
                               eval_t)
