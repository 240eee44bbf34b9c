"""The two basic strategies: uniform weights (plain distillation) and teacher confidence."""
from __future__ import annotations

from typing import Annotated, Literal

import torch
from annotated_types import Ge

from kd_engine.errors import ConfigError
from kd_engine.weighting.base import WEIGHTINGS, DetectionWeights, WeightingStrategy


@WEIGHTINGS.register("uniform")
class Uniform(WeightingStrategy):
    """Every instance counts the same: the plain distillation baseline. `value` other than 1 gives
    the control arm "base distillation scaled by another strategy's mean weight"."""

    requires = ("distill_loss",)
    tasks = ("classification", "detection", "dense")

    def __init__(self, value: Annotated[float, Ge(0)] = 1.0):
        if value < 0:
            raise ConfigError(f"weighting.params.value: must be >= 0, got {value}")
        self.value = float(value)

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.full_like(batch["distill_loss"], self.value).detach()

    def detection_weights(self, teacher_losses):
        """`value` on every (image, level): base distillation, or the constant-mean control."""
        w = torch.full(tuple(teacher_losses.cls_level.shape), self.value,
                       device=teacher_losses.cls_level.device)
        return DetectionWeights(w, w, w, "per_image_level", float("nan")), None


@WEIGHTINGS.register("teacher_confidence")
class TeacherConfidence(WeightingStrategy):
    """Trust the teacher where it is sure: w = p_T^power, where p_T is the teacher's max
    probability (`source: max`) or its probability of the true label (`source: target`)."""

    requires = ("teacher_logits", "label")

    def __init__(self, source: Literal["max", "target"] = "max", power: Annotated[float, Ge(0)] = 1.0,
                 normalize: bool = False):
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
