"""EMA teacher (mean teacher / BYOL / DINO): a frozen copy of the student that trails it."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def cosine_momentum(step: int, total_steps: int, base: float = 0.996,
                    final: float = 1.0) -> float:
    """DINO's schedule: momentum rises from ``base`` at step 0 to ``final`` at ``total_steps``
    along a half cosine, so the teacher follows closely early and freezes towards the end."""
    if total_steps <= 0:
        return float(final)
    progress = min(max(step / total_steps, 0.0), 1.0)
    return float(final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0)


class EMATeacher:
    """Frozen deep copy of ``model`` updated by θ_t ← m·θ_t + (1 − m)·θ_s.

    Parameters never require grad (the teacher is a target, not trained). Buffers (e.g.
    BatchNorm running statistics, counters) are copied from the student at each update, as in
    the common implementations, since averaging integer counters makes no sense. The copy's
    train/eval mode is left as the caller sets it (``teacher.module.eval()``).
    """

    def __init__(self, model: nn.Module, momentum: float = 0.996):
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.module = copy.deepcopy(model)
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float | None = None) -> None:
        """One EMA step towards ``student`` (``momentum`` overrides the stored one, e.g. from
        :func:`cosine_momentum`). Parameters and buffers are matched by name."""
        m = self.momentum if momentum is None else float(momentum)
        s_params = dict(student.named_parameters())
        for name, p_t in self.module.named_parameters():
            p_t.mul_(m).add_(s_params[name].detach().to(p_t.dtype), alpha=1.0 - m)
        s_buffers = dict(student.named_buffers())
        for name, b_t in self.module.named_buffers():
            b_t.copy_(s_buffers[name])

    def __call__(self, *args, **kwargs):
        """Forward through the teacher without building a graph."""
        with torch.no_grad():
            return self.module(*args, **kwargs)

    def state_dict(self) -> dict:
        return {"momentum": self.momentum, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.momentum = float(state["momentum"])
        self.module.load_state_dict(state["module"])
