"""Matching losses of maps indexed by one spatial axis (per-azimuth maps, (B, C, A)), for SAM's
aligned cross-modal distillation and its direct-KD baseline.

Both are pure functions of maps already at the teacher's width and resolution (an adapter and,
for the baseline, a resize happen before); the teacher maps are targets and are detached.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ._reduce import check_reduction, reduce
from .bev import masked_feature_mse


def aligned_feature_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None,
                        reduction: str = "mean") -> torch.Tensor:
    """Per sample Σ_a m_a · mean_c (S − sg(T))²_{c,a} for (B, C, A) maps.

    ``mask`` (B, A) weighs the positions (normally summing to 1 per sample); None gives 1/A
    everywhere, i.e. the mean squared error over channels and positions. This is the
    (B, C, H, W) `masked_feature_mse` with H = 1."""
    check_reduction(reduction)
    if student.dim() != 3 or student.shape != teacher.shape:
        raise ValueError(f"aligned_feature_mse: student and teacher maps must be (B, C, A) of one shape; got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    if mask is None:
        mask = student.new_full((student.shape[0], student.shape[2]), 1.0 / student.shape[2])
    if mask.shape != (student.shape[0], student.shape[2]):
        raise ValueError(f"mask must be (B, A) = {(student.shape[0], student.shape[2])}, got {tuple(mask.shape)}")
    return masked_feature_mse(student.unsqueeze(2), teacher.unsqueeze(2), mask.unsqueeze(1), reduction)


def multilayer_matching(students: Sequence[torch.Tensor], teachers: Sequence[torch.Tensor],
                        weights: Sequence[float] | None = None, reduction: str = "mean") -> torch.Tensor:
    """SAM's matching loss at several layers: per sample L = Σ_l w_l · mean_{c,a} (Ŝ_l − sg(T_l))².

    ``students[l]`` is the aligned map of layer l after its adapter (B, C_l, A), ``teachers[l]``
    the teacher's map there; ``weights`` default to 1 for every layer (the sum, not the mean, of
    the layers' errors, as L_SAM = Σ_l ‖Ŝ_l − sg(T_l)‖²)."""
    check_reduction(reduction)
    if not students or len(students) != len(teachers):
        raise ValueError(f"multilayer_matching: one teacher map per student map, got {len(students)} and {len(teachers)}")
    weights = [1.0] * len(students) if weights is None else list(weights)
    if len(weights) != len(students):
        raise ValueError(f"multilayer_matching: one weight per layer, got {len(weights)} for {len(students)} layers")
    per_sample = sum(w * aligned_feature_mse(s, t, reduction="none") for w, s, t in zip(weights, students, teachers))
    return reduce(per_sample, reduction)
