"""The distiller interface every method implements (after mdistiller's distillers): a module
that holds the student, the frozen teacher and any trainable extras, and returns the student's
logits, the named losses it wants summed, and what it decided per instance."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class StepOutput:
    logits: torch.Tensor
    losses: dict[str, torch.Tensor]
    # (B,) tensors recorded per instance: teacher_loss, student_loss, distill_loss, weight, ...
    per_sample: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_logits: torch.Tensor | None = None
    # batch-level diagnostics (0-d tensors) logged per step as train/<name>, never optimised
    scalars: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def total(self) -> torch.Tensor:
        return sum(self.losses.values())


class Distiller(nn.Module):
    """Base class. Subclasses set `needs_teacher` and implement `forward(x, y) -> StepOutput`."""

    needs_teacher = True
    # True: the training loop calls forward(x, y, ids) with the batch's instance ids, for methods
    # that keep per-instance state (pseudo-labels, multi-hot targets) in tables keyed by id.
    wants_ids = False

    def __init__(self, student: nn.Module, teacher: nn.Module | None):
        super().__init__()
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.eval()
            for parameter in teacher.parameters():
                parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> "Distiller":
        """The teacher stays in eval mode: its BatchNorm must not drift with the student's batches."""
        super().train(mode)
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
