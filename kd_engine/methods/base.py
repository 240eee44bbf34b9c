"""The distiller interface every method implements (after mdistiller's distillers): a module
that holds the student, the frozen teacher and any trainable extras, and returns the student's
logits, the named losses it wants summed, and what it decided per instance.

Besides ``forward``, a method talks to the trainer only through the hooks below (all optional):
``begin_epoch``/``after_step`` (schedules, EMA), ``phases`` (training stretches before the epochs,
stepped by the trainer), ``evaluation_metrics``/``epoch_metrics`` (its own metrics),
``reported_student`` (which network is "the student" in the records), ``feature_pairs`` (the
layers whose disparity is recorded by default), ``check_data`` and the class attributes
``needs_teacher``, ``single_process``, ``wants_ids`` and ``bank_mode``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn


def smoothed_task_loss(logits: torch.Tensor, y: torch.Tensor, plain: torch.Tensor,
                       smoothing: float) -> torch.Tensor:
    """The per-sample task cross-entropy a student trains on: ``plain`` (its cross-entropy with
    ``y``, also what is recorded per instance) when ``smoothing`` is 0, else the cross-entropy
    with label smoothing ε (the target puts 1 − ε on the label and ε/C on every class, Szegedy
    et al. 2016), so the recorded rows stay comparable between runs with and without it."""
    if not smoothing:
        return plain
    return F.cross_entropy(logits.float(), y, reduction="none", label_smoothing=smoothing)


@dataclass
class StepOutput:
    logits: torch.Tensor
    losses: dict[str, torch.Tensor]
    # (B,) tensors recorded per instance: teacher_loss, student_loss, distill_loss, weight, ...
    per_sample: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_logits: torch.Tensor | None = None
    # batch-level diagnostics (0-d tensors) logged per step under their full key (e.g.
    # "train/gate_raw_mean", "role/S1"), never optimised
    scalars: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def total(self) -> torch.Tensor:
        values = list(self.losses.values())  # summed from the first, not from 0: one add fewer
        return sum(values[1:], values[0]) if values else 0


@dataclass
class PhaseReport:
    """What a finished phase leaves in the run: scalars (logged at step 0), artifacts (keyword
    arguments of `RunWriter.save_artifact`) and one event line."""

    scalars: dict[str, float] = field(default_factory=dict)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    event: str | None = None


@dataclass
class Phase:
    """A stretch of training a method needs before the epochs (Cr-KD's supervised stage 1). The
    trainer runs it: for each item of ``batches()`` it sets every group's lr to ``lr(step)``
    (unless None), calls ``step(item) -> StepOutput`` under autocast, refuses a non-finite loss,
    backpropagates, clips ``parameters`` at the run's grad_clip, steps ``optimizer`` and calls
    ``after_step()``; then it records ``finish() -> PhaseReport``."""

    name: str
    optimizer: torch.optim.Optimizer
    parameters: list[nn.Parameter]
    batches: Callable[[], Iterable[Any]]
    step: Callable[[Any], StepOutput]
    finish: Callable[[], PhaseReport]
    lr: Callable[[int], float | None] = lambda step: None
    after_step: Callable[[], None] = lambda: None


class Distiller(nn.Module):
    """Base class. Subclasses set `needs_teacher` and implement `forward(x, y) -> StepOutput`."""

    needs_teacher = True
    # True: the training loop calls forward(x, y, ids) with the batch's instance ids, for methods
    # that keep per-instance state (pseudo-labels, multi-hot targets) in tables keyed by id.
    wants_ids = False
    # True: the method trains in one process (a group of networks, a stage before the epochs)
    single_process = False
    # How the method reads a teacher soft-label bank (`teacher_bank: true`): None (it cannot),
    # "wrapped" (its teacher is replaced by the bank's stored logits) or "native" (it reads the
    # bank itself, through the ids it is given).
    bank_mode: str | None = None
    # True: the task cross-entropy takes the config's `label_smoothing` (`smoothed_task_loss`)
    smooths_labels = False

    def __init__(self, student: nn.Module, teacher: nn.Module | None):
        super().__init__()
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.eval()
            for parameter in teacher.parameters():
                parameter.requires_grad_(False)

    @classmethod
    def requires_teacher(cls, cfg) -> bool:
        """Whether a run of this method with ``cfg`` needs a teacher section (checked once, by
        `kd_engine.run`); a method whose need depends on its params overrides this."""
        return cls.needs_teacher

    def train(self, mode: bool = True) -> "Distiller":
        """The teacher stays in eval mode: its BatchNorm must not drift with the student's batches.
        (It is skipped by the walk over the other children: one walk of its modules, not two.)"""
        self.training = mode
        for child in self.children():
            if child is not self.teacher:
                child.train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def begin_epoch(self, epoch: int, total_epochs: int) -> None:
        """Called by the loop before each training epoch (e.g. a schedule on a method's own knob)."""

    def after_step(self, step: int, epoch: int) -> None:
        """Called by the loop after each optimizer step (e.g. an EMA teacher trailing the student)."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def extra_state_modules(self) -> dict[str, nn.Module]:
        """Trainable modules besides the student (adapters), checkpointed with it."""
        return {name: module for name, module in self.named_children()
                if name not in ("student", "teacher") and any(True for _ in module.parameters())}

    # -- hooks the trainer calls ------------------------------------------------------------------
    def check_data(self, data) -> None:
        """Raise ConfigError when the data bundle cannot serve this method (before a run exists)."""

    def phases(self, task) -> list[Phase]:
        """Training stretches to run before the first epoch (not on resume)."""
        return []

    def evaluation_metrics(self, split: str, task) -> dict[str, float]:
        """The method's own metrics on a split, computed before the task's evaluation (so a group
        can pick its reported member on val) and merged over the task's metrics."""
        return {}

    def epoch_metrics(self, task) -> dict[str, float]:
        """Metrics logged after every training epoch (before validation)."""
        return {}

    def reported_student(self) -> tuple[str | None, nn.Module, Any]:
        """(member name or None, the network reported and checkpointed as the student, its model
        spec or None for the configured student)."""
        return None, self.student, None

    def feature_pairs(self) -> list[tuple[str, str]]:
        """(student layer, teacher layer) pairs whose disparity is recorded when the config names
        none: by default the layers both models share by name."""
        if self.teacher is None:
            return []
        shared = [n for n in getattr(self.student, "feature_layers", [])
                  if n in getattr(self.teacher, "feature_layers", [])]
        return [(n, n) for n in shared]

    def weighting_state(self) -> dict:
        """Random state of the method's weighting (a shuffling control), checkpointed."""
        return {}

    def load_weighting_state(self, state: dict) -> None:
        pass
