"""BOSS's self-distillation step (paper 23): L = α·CE(z_S, y) + (1 − α)·MSE(z_S, z_T).

The teacher is a checkpoint of an earlier trial (`teacher.checkpoint`, same architecture as the
student) and the student starts from another one (`distill.params.init_from`); the pool they are
drawn from is chosen by `kd_engine.search.boss`. The MSE is the mean over classes of the squared
logit difference (PyTorch's MSELoss per sample), as in the public code's `nn.MSELoss`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from annotated_types import Interval

from kd_engine.methods.base import Distiller, StepOutput
from kd_engine.methods.registry import METHODS
from kd_engine.params import Param, read_params
from kd_engine.trainers.checkpoint import load_weights

DEFAULTS = {"alpha": Param(0.5, Interval(ge=0, le=1)), "init_from": Param(None, kind=str | None)}


def logit_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor, reduction: str = "mean"):
    """Per sample: mean over classes of (z_S − z_T)²; the teacher is detached."""
    per_sample = (student_logits - teacher_logits.detach()).pow(2).mean(dim=1)
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


@METHODS.register("boss")
class BOSS(Distiller):
    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(student, teacher)
        params = read_params(cfg.distill.params, DEFAULTS, "distill.params", "method boss")
        self.alpha = params["alpha"]
        self.init_from = params["init_from"]
        if self.init_from:
            load_weights(student, self.init_from, field="distill.params.init_from")

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        with torch.no_grad():
            t_logits = self.teacher(x)
        s_logits = self.student(x)
        ce = F.cross_entropy(s_logits.float(), y, reduction="none")
        mse = logit_mse(s_logits.float(), t_logits.float(), reduction="none")
        per_sample = {"student_loss": ce.detach(), "term_mse": mse.detach(),
                      "teacher_loss": F.cross_entropy(t_logits.float(), y, reduction="none"),
                      "distill_loss": ((1 - self.alpha) * mse).detach()}
        losses = {"task": self.alpha * ce.mean(), "distill": (1 - self.alpha) * mse.mean()}
        return StepOutput(s_logits, losses, per_sample, t_logits)
