"""Per-instance weighting strategies: how much each instance's distillation loss counts.

A strategy sees the batch's per-sample quantities (distillation loss, the teacher's task loss,
the teacher's logits, labels) and returns one weight per sample. The trainer multiplies the
per-sample distillation loss by exactly these weights and records them, so what the dashboard
shows is what the loss used.
"""
from __future__ import annotations

from typing import Any

import torch

from kd_engine.registry import Registry, construct

WEIGHTINGS: Registry[type["WeightingStrategy"]] = Registry("weighting strategy")


class WeightingStrategy:
    """Base class. `requires` names the per-sample inputs a strategy reads."""

    requires: tuple[str, ...] = ()
    differentiable = False  # most strategies detach their weights; a gated method may not

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


def build_weighting(name: str, params: dict[str, Any]) -> WeightingStrategy:
    cls = WEIGHTINGS.get(name, field="weighting.strategy")
    return construct(cls, params, f"weighting.params (strategy {name})")

