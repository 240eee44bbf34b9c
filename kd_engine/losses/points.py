"""Per-point distillation losses for point clouds, with a validity mask for points that have no
target (a point seen in no view has no 2-D feature to learn from)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._reduce import check_reduction, reduce


def masked_normalised_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                          reduction: str = "mean") -> torch.Tensor:
    """Masked normalised MSE between per-point features (PointDC's cross-modal distillation).

    Per sample (scene) b: L_b = Σ_p m_bp ‖n(s_bp) − n(t_bp)‖² / Σ_p m_bp, with n the L2
    normalisation over channels (so ‖n(s) − n(t)‖² = 2 − 2 cos(s, t), in [0, 4]) and m the
    validity mask; a scene with no valid point gives 0 (not NaN). ``student`` and ``teacher``
    are (B, N, D), ``mask`` (B, N) bool or {0, 1}; the teacher side gets no gradient.
    """
    check_reduction(reduction)
    if student.shape != teacher.shape or student.dim() != 3 or tuple(mask.shape) != tuple(student.shape[:2]):
        raise ValueError("masked_normalised_mse needs (B, N, D) student and teacher features and a (B, N) mask; "
                         f"got {tuple(student.shape)}, {tuple(teacher.shape)} and {tuple(mask.shape)}")
    m = mask.to(student.dtype)
    per_point = (F.normalize(student, dim=-1) - F.normalize(teacher.detach(), dim=-1)).pow(2).sum(-1)
    per_sample = (per_point * m).sum(1) / m.sum(1).clamp_min(1.0)
    return reduce(per_sample, reduction)


masked_normalised_mse.batch_level = False
