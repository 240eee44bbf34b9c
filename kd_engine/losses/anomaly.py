"""Feature losses of student–teacher anomaly detection: the per-position cosine distance that is
both the training loss and the anomaly map, and the two losses that shape a key–value memory.

The identity that ties them: for any non-zero vectors a, b, ½‖a/‖a‖ − b/‖b‖‖² = 1 − cos(a, b),
so "½ squared distance of L2-normalised features" and "1 − cosine" are one quantity.
"""
from __future__ import annotations

from typing import Annotated

import torch
from annotated_types import Gt
import torch.nn.functional as F

from ._reduce import check_reduction, reduce


def _check_maps(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.dim() < 2 or student.shape != teacher.shape:
        raise ValueError("student and teacher features must have the same shape (B, C, ...); got "
                         f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)}")


def cosine_distance_map(student: torch.Tensor, teacher: torch.Tensor, eps: Annotated[float, Gt(0)] = 1e-8) -> torch.Tensor:
    """(B, C, *S) and (B, C, *S) -> (B, *S): 1 − cos(F_S,p, F_T,p) over channels at every position
    p, in [0, 2]. The teacher side carries no gradient."""
    _check_maps(student, teacher)
    return 1.0 - F.cosine_similarity(student.float(), teacher.detach().float(), dim=1, eps=eps)


def cosine_feature_kd(student: torch.Tensor, teacher: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cosine feature distillation: per sample, mean_p (1 − cos(F_S,p, F_T,p)) over the positions
    of one level (0 for identical or positively scaled features, 2 for opposite ones)."""
    check_reduction(reduction)
    return reduce(cosine_distance_map(student, teacher).flatten(1).mean(1), reduction)


def normality_embedding(recall: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Normality-embedding loss of a memory: per exemplar, ½·mean_p ‖n(T_p) − n(R_p)‖² between
    the target features T (the teacher's, on normal exemplars) and the memory's recall R of
    them, n = L2 normalisation over channels. Equal to mean_p (1 − cos(R_p, T_p))."""
    check_reduction(reduction)
    _check_maps(recall, target)
    diff = F.normalize(target.detach().float(), dim=1) - F.normalize(recall.float(), dim=1)
    return reduce(0.5 * diff.pow(2).sum(1).flatten(1).mean(1), reduction)


def key_value_orthogonality(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Σ_{i,j} cos(K_i, V_j) / L² for (L, C) keys and values: the mean cosine between every key
    and every value (a batch-independent term; it has no per-sample form)."""
    if keys.dim() != 2 or keys.shape != values.shape:
        raise ValueError(f"keys and values must both be (L, C); got {tuple(keys.shape)} and {tuple(values.shape)}")
    return (F.normalize(keys, dim=1) @ F.normalize(values, dim=1).t()).mean()
