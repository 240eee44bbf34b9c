"""Per-instance weighting strategies: how much each instance's distillation loss counts.

A strategy sees the batch's per-sample quantities (distillation loss, the teacher's task loss,
the teacher's logits, labels) and returns one weight per sample. The trainer multiplies the
per-sample distillation loss by exactly these weights and records them, so what the dashboard
shows is what the loss used.
"""
from __future__ import annotations

from typing import Any

import torch

from kd_engine.errors import ConfigError
from kd_engine.registry import Registry, construct

WEIGHTINGS: Registry[type["WeightingStrategy"]] = Registry("weighting strategy")


class WeightingStrategy:
    """Base class. `requires` names the per-sample inputs a strategy reads."""

    requires: tuple[str, ...] = ()
    differentiable = False  # most strategies detach their weights; a gated method may not

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


@WEIGHTINGS.register("uniform")
class Uniform(WeightingStrategy):
    """Every instance counts the same: the plain distillation baseline."""

    requires = ("distill_loss",)

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.ones_like(batch["distill_loss"]).detach()


@WEIGHTINGS.register("teacher_confidence")
class TeacherConfidence(WeightingStrategy):
    """Trust the teacher where it is sure: w = p_T^power, where p_T is the teacher's max
    probability (`source: max`) or its probability of the true label (`source: target`)."""

    requires = ("teacher_logits", "label")

    def __init__(self, source: str = "max", power: float = 1.0, normalize: bool = False):
        if source not in ("max", "target"):
            raise ConfigError(f"weighting.params.source: expected 'max' or 'target', got {source!r}")
        if power < 0:
            raise ConfigError(f"weighting.params.power: must be >= 0, got {power}")
        self.source, self.power, self.normalize = source, float(power), bool(normalize)

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        probs = batch["teacher_logits"].detach().float().softmax(dim=1)
        if self.source == "max":
            confidence = probs.max(dim=1).values
        else:
            confidence = probs.gather(1, batch["label"].view(-1, 1)).squeeze(1)
        weights = confidence.pow(self.power)
        if self.normalize:
            weights = weights / weights.mean().clamp_min(1e-12)
        return weights.detach()


def build_weighting(name: str, params: dict[str, Any]) -> WeightingStrategy:
    cls = WEIGHTINGS.get(name, field="weighting.strategy")
    return construct(cls, params, f"weighting.params (strategy {name})")

