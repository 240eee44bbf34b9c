"""Shared reduction helper so every loss treats ``reduction`` the same way."""

from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> None:
    """Raise ``ValueError`` naming ``reduction`` unless it is one of ``REDUCTIONS``."""
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}"
        )


def reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce a per-sample loss of shape (B,): batch mean, sum, or unchanged for ``"none"``."""
    check_reduction(reduction)
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.mean()
