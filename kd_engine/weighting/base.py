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
    # Run kinds a strategy serves; detection strategies also implement `detection_weights`.
    tasks: tuple[str, ...] = ("classification",)

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def check_task(self, task: str) -> None:
        """Raise ConfigError for params that mean nothing for this kind of run."""

    def detection_weights(self, teacher_losses):
        """(used, raw) ``AIDWeights`` for a detection batch; raw is None when there is none."""
        raise NotImplementedError

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

