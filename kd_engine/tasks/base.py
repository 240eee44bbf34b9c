"""The task interface: everything that differs between kinds of run (classification, detection,
dense prediction, ...), so one `kd_engine.trainer.Trainer` serves them all.

The trainer owns what every run shares: the optimizer step with its non-finite-loss guard, AMP,
gradient clipping, warm-up and schedules, per-step scalars, checkpoints, exact resume, SIGTERM,
DDP and the run store. A task owns the rest, through exactly these members:

=====================================  =======================================================
member                                 what the task does
=====================================  =======================================================
``name`` (class attribute)             the task's registry name; a dataset builder whose
                                       ``task`` attribute equals it selects this task
``methods`` (class attribute)          the `Registry` of distillers for this task
``headline`` (class attribute)         metric-name endings shown in the per-epoch log line
``build_data(cfg)`` (classmethod)      the data bundle (default: the dataset builder's at the
                                       run's seed): ``.train/.val/.test`` splits (each
                                       with ``.ids`` and ``len``), ``.input_shape``,
                                       ``.num_classes``, ``.class_names``, ``.meta``
``__init__(cfg, data, device, ctx,     keep what the other members need (the base class
autocast)``, ``setup()``               stores them as attributes of the same names, then
                                       calls ``setup()`` for the task's own state)
``batches(epoch, wants_ids)``          this rank's training batches of one epoch as `Batch`es,
                                       moved to ``device`` (``epoch_positions`` gives each
                                       batch's positions); the order must depend only on
                                       ``(cfg.seed, epoch)`` (exact resume); under DDP every
                                       rank yields the same number of batches and marks padding
                                       in ``Batch.keep``
``step_scalars(out)``                  batch-level scalars of one step beyond the losses (full
                                       keys, e.g. ``"train/weight_mean"``; 0-d tensors)
``train_rows(out, batch, step,         the per-instance rows of one training batch (columns of
epoch)``                               equal length; ``instance_id``, ``step`` and ``epoch``
                                       included; padding left out), or None
``merge_rows(rows)``                   a chunk of steps' rows into columns for the store
                                       (default: concatenate; override to fill columns some
                                       rows lack, or to compute columns from raw tensors that
                                       `train_rows` kept: it runs on the store's writer thread)
``evaluate(split, student, teacher,    metrics (``"<split>/<role>_<metric>"``), per-instance
final)``                               eval columns (``instance_id`` first) and artifacts of one
                                       split, as an `Evaluation`; ``final`` is True for the
                                       last test pass (save what the dashboard shows then)
``save_inputs(writer)``                once, when a run is created: what the dashboard needs
                                       besides the records (image bank, ground truth)
``probe_inputs(count)``                the inputs whose teacher/student features are compared
                                       each epoch (a tensor on ``device`` and their ids), or
                                       None when the task records no feature disparity
``run_meta(distiller)``                extra run metadata (written at creation)
``bind(distiller)``                    called once by the trainer before anything runs, for a
                                       task that evaluates through the method's own pass
                                       (anomaly maps); default: nothing
=====================================  =======================================================

A task never steps an optimizer, opens the store, touches checkpoints or reads the config
beyond its data and recording sections. Adding a task is one module under ``kd_engine/tasks/``
that registers a subclass in ``TASKS``, a dataset builder with ``task = "<name>"``, and a test.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import numpy as np
import torch
from torch import nn

from kd_engine.data import build_data
from kd_engine.registry import Registry
from kd_engine.trainers import runtime


@dataclass
class Batch:
    """One training batch as the trainer sees it."""

    inputs: tuple  # positional arguments of the distiller's forward, already on the device
    ids: torch.Tensor  # (B,) int64 instance ids, on the CPU
    size: int  # samples, counted for throughput
    keep: torch.Tensor | None = None  # (B,) bool: False marks DDP padding, never recorded
    kwargs: dict[str, Any] = field(default_factory=dict)  # keyword arguments of forward


@dataclass
class Artifact:
    """An array the dashboard shows, saved through `RunWriter.save_artifact`."""

    name: str
    array: np.ndarray
    kind: str
    dtype: str = "float32"
    role: str | None = None
    epoch: int | None = None
    meta: dict[str, Any] | None = None


@dataclass
class Evaluation:
    """What one evaluation pass over a split gives."""

    metrics: dict[str, float]
    columns: dict[str, np.ndarray]  # per-instance eval rows, instance_id first; {} for none
    artifacts: list[Artifact] = field(default_factory=list)


class Task(ABC):
    """One kind of run; see the module docstring for the contract."""

    name: ClassVar[str]
    methods: ClassVar[Registry]
    headline: ClassVar[tuple[str, ...]] = ()
    # whether data.holdout_fold and teacher.cross_fit work here (a teacher per fold of image ids)
    cross_fit: ClassVar[bool] = False

    def __init__(self, cfg, data, device: torch.device, ctx, autocast):
        self.cfg, self.data, self.device, self.ctx, self.autocast = cfg, data, device, ctx, autocast
        self.setup()

    def setup(self) -> None:
        """A task's own state, made once the attributes above are set (instead of an ``__init__``
        that repeats the base signature)."""

    @classmethod
    def build_data(cls, cfg):
        """The data bundle of ``cfg.data`` (splits fixed by the split seed); by default the
        registered dataset builder's bundle at the run's seed."""
        return build_data(cfg.data, cfg.seed)

    @abstractmethod
    def batches(self, epoch: int, wants_ids: bool = False) -> Iterator[Batch]:
        """This rank's training batches of ``epoch``, on the device."""

    def epoch_positions(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches of ``epoch`` as (positions in the training split, keep mask), for
        `batches` to load: the split shuffled by ``(cfg.seed, epoch)`` alone (exact resume) and cut
        into ``data.batch_size`` batches. Under DDP the order is padded with its first positions so
        every rank gets the same number of batches, rank r takes every world-th position from r,
        and ``keep`` is False on the padding (its rows are not recorded)."""
        n = len(self.data.train)
        order = torch.randperm(n, generator=runtime.epoch_generator(self.cfg.seed, epoch))
        real = torch.ones(n, dtype=torch.bool)
        world = self.ctx.world_size
        if world > 1:
            order = torch.cat([order, order[: (-n) % world]])
            real = torch.arange(len(order)) < n
            order, real = order[self.ctx.rank::world], real[self.ctx.rank::world]
        count = max(1, math.ceil(len(order) / self.cfg.data.batch_size))
        return zip(torch.tensor_split(order, count), torch.tensor_split(real, count))

    def step_scalars(self, out) -> dict[str, torch.Tensor]:
        """This step's task scalars by name: a 0-d tensor is recorded as it is, a 1-d one (per
        sample) as its mean, which the trainer takes when it writes a span of steps, so the
        step itself runs no tensor operation for them."""
        return {}

    @abstractmethod
    def train_rows(self, out, batch: Batch, step: int, epoch: int) -> dict[str, Any] | None:
        """Per-instance rows of one training batch (tensors on any device, or arrays)."""

    def per_sample_rows(self, out, batch: Batch, step: int, epoch: int, **columns) -> dict[str, torch.Tensor]:
        """The training rows most tasks record: ``instance_id``, ``step``, ``epoch``, the task's own
        ``columns`` (one value per sample each) and every per-sample value of the method, on the
        CPU, with DDP padding left out. A task's `train_rows` can return this directly."""
        ids = batch.ids
        record = {"instance_id": ids, "step": torch.full_like(ids, step), "epoch": torch.full_like(ids, epoch),
                  **{k: torch.as_tensor(v).detach().cpu() for k, v in columns.items()},
                  **{k: v.detach().float().cpu() for k, v in out.per_sample.items()}}
        if self.ctx.world_size == 1 or batch.keep is None:
            return record
        return {k: v[batch.keep] for k, v in record.items()}

    def merge_rows(self, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """One epoch's batch rows as store columns (every batch has the same columns here)."""
        if not rows:
            return {}
        return {k: np.concatenate([_numpy(r[k]) for r in rows]) for k in rows[0]}

    @abstractmethod
    def evaluate(self, split: str, student: nn.Module, teacher: nn.Module | None,
                 final: bool = False) -> Evaluation:
        """Evaluate the student (and, where there is one, the frozen teacher) on ``split``."""

    def save_inputs(self, writer) -> None:
        """Write what the dashboard needs besides the records (called once per run)."""

    def probe_inputs(self, count: int) -> tuple[torch.Tensor, list[int]] | None:
        return None

    def run_meta(self, distiller) -> dict[str, Any]:
        return {}

    def bind(self, distiller) -> None:
        """Keep the method, for tasks that score through its own pass (called once, by the trainer)."""


def _numpy(value) -> np.ndarray:
    return value.numpy() if torch.is_tensor(value) else np.asarray(value)


TASKS: Registry[type[Task]] = Registry("task")
