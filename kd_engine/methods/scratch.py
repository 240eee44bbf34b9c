"""The student alone, trained on labels: the baseline every distillation run is compared with.
A teacher, when given, is only observed (its per-instance loss and predictions are recorded)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kd_engine.methods.base import Distiller, StepOutput, smoothed_task_loss
from kd_engine.methods.registry import METHODS


@METHODS.register("scratch")
class Scratch(Distiller):
    needs_teacher = False
    smooths_labels = True

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(student, teacher)
        self.label_smoothing = cfg.label_smoothing  # on the trained loss only (not the recorded one)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        logits = self.student(x)
        student_loss = F.cross_entropy(logits.float(), y, reduction="none")
        per_sample = {"student_loss": student_loss.detach()}
        teacher_logits = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(x)
            per_sample["teacher_loss"] = F.cross_entropy(teacher_logits.float(), y, reduction="none")
        task_loss = smoothed_task_loss(logits, y, student_loss, self.label_smoothing)
        return StepOutput(logits, {"task": task_loss.mean()}, per_sample, teacher_logits)
