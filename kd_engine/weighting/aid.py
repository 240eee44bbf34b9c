"""Adaptive Instance Distillation (Lan & Tian, 2022) for per-sample losses.

w_i = exp(−α · L^T_task,i): the teacher's own task loss on instance i sets how much the student
imitates it there. Where the teacher is right (L^T → 0) w → 1; where it is wrong the student
learns the instance mainly from its label. The weight is not normalised, so its mean is below 1
and AID also weakens distillation overall; the `uniform` strategy with `value` = AID's mean
weight is the control for that, and `shuffle: true` (weights permuted across the batch) is the
control for whether *which* instance gets which weight matters.
"""
from __future__ import annotations

import torch

from kd_engine.errors import ConfigError
from kd_engine.weighting.base import WEIGHTINGS, WeightingStrategy


def aid_weights(teacher_loss: torch.Tensor, alpha: float) -> torch.Tensor:
    """exp(−α·L), detached: the teacher's loss is a signal about the teacher, not a target."""
    return torch.exp(-alpha * teacher_loss.detach().float())


@WEIGHTINGS.register("aid")
class AdaptiveInstance(WeightingStrategy):
    requires = ("teacher_loss",)

    def __init__(self, alpha: float = 0.1, shuffle: bool = False, seed: int = 0):
        if alpha < 0:
            raise ConfigError(f"weighting.params.alpha: must be >= 0, got {alpha}")
        self.alpha, self.shuffle = float(alpha), bool(shuffle)
        self._generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        weights = aid_weights(batch["teacher_loss"], self.alpha)
        if self.shuffle:
            order = torch.randperm(len(weights), generator=self._generator).to(weights.device)
            weights = weights[order]
        return weights
