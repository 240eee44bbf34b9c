"""Per-instance weighting strategies: how much each instance's distillation loss counts.

A strategy sees the batch's per-sample quantities (distillation loss, the teacher's task loss,
the teacher's logits, labels) and returns one weight per sample. The trainer multiplies the
per-sample distillation loss by exactly these weights and records them, so what the dashboard
shows is what the loss used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kd_engine.errors import ConfigError
from kd_engine.registry import Registry, construct

@dataclass
class DetectionWeights:
    """Detached per-instance weights of a detection batch (AID's, or a constant). ``feature``/``cls``/``box`` are (B, L) for per_image_level, (L,) for
    per_level_batch and (B,) for per_image/per_gt; without ``decoupled`` all three are the same
    tensor. ``per_gt`` holds each image's (G,) feature-side GT weights (per_gt only)."""

    feature: Tensor
    cls: Tensor
    box: Tensor
    granularity: str
    alpha: float
    decoupled: bool = False
    per_gt: list[Tensor] | None = None
    num_gt_without_anchors: int = 0

    def as_image_level(self, B: int, L: int, which: str = "feature") -> Tensor:
        """Broadcast ``feature``/``cls``/``box`` to (B, L) for ``weighted_kd``. The granularity,
        not the shape, decides the axis, so B == L is not ambiguous."""
        w = getattr(self, which)
        if self.granularity == "per_image_level":
            expected, out = (B, L), w
        elif self.granularity == "per_level_batch":
            expected, out = (L,), w[None, :].expand(B, L)
        else:
            expected, out = (B,), w[:, None].expand(B, L)
        if tuple(w.shape) != expected:
            raise ValueError(f"{self.granularity} {which} weights have shape {tuple(w.shape)}, "
                             f"expected {expected} for B={B}, L={L}")
        return out


def aid_weights(teacher_loss: torch.Tensor, alpha: float) -> torch.Tensor:
    """exp(−α·L), detached: the teacher's loss is a signal about the teacher, not a target."""
    return torch.exp(-alpha * teacher_loss.detach().float())


WEIGHTINGS: Registry[type["WeightingStrategy"]] = Registry("weighting strategy")


class WeightingStrategy:
    """Base class. `requires` names the per-sample inputs a strategy reads."""

    requires: tuple[str, ...] = ()
    differentiable = False  # most strategies detach their weights; a gated method may not
    # Run kinds a strategy serves; detection strategies also implement `detection_weights`.
    tasks: tuple[str, ...] = ("classification",)

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def check_task(self, task: str) -> None:
        """Raise ConfigError for params that mean nothing for this kind of run."""

    def detection_weights(self, teacher_losses):
        """(used, raw) ``DetectionWeights`` for a detection batch; raw is None when there is none."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The settings a run records in its metadata for the dashboard (e.g. AID's alpha and
        granularity); empty when there is nothing to show beyond the strategy's name."""
        return {}

    def state_dict(self) -> dict:
        """Random state to checkpoint (a shuffling control), so a resumed run continues it."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def build_weighting(name: str, params: dict[str, Any],
                    task: str = "classification") -> WeightingStrategy:
    cls = WEIGHTINGS.get(name, field="weighting.strategy")
    if task not in cls.tasks:
        allowed = [n for n in WEIGHTINGS.names() if task in WEIGHTINGS.get(n).tasks]
        raise ConfigError(f"weighting.strategy: {name!r} does not weight {task} runs "
                          f"(allowed: {', '.join(allowed)})")
    strategy = construct(cls, params, f"weighting.params (strategy {name})")
    strategy.check_task(task)
    return strategy

