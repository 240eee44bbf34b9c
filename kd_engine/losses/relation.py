"""Relation-based distillation: Relational Knowledge Distillation (RKD)."""

from __future__ import annotations

from typing import Annotated

from annotated_types import Ge
import torch
import torch.nn.functional as F

from ._reduce import check_reduction, reduce
from kd_engine.losses.term_registry import term


def _pairwise_distance(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """B×B Euclidean distances with an exact zero diagonal (gradient-safe at zero)."""
    sq = e.pow(2).sum(dim=1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * e @ e.t()).clamp_min(eps)
    off_diag = 1.0 - torch.eye(e.size(0), dtype=e.dtype, device=e.device)
    return d2.sqrt() * off_diag


def _normalised_distance(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    d = _pairwise_distance(e)
    positive = d[d > 0]
    scale = positive.mean() if positive.numel() else d.new_tensor(1.0)
    return d / scale.clamp_min(eps)


def _angles(e: torch.Tensor) -> torch.Tensor:
    """angle[i, j, k] = e_ij · e_ik with e_ij = normalise(x_j - x_i): cosine of the angle at i."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2))


@term("rkd", "embedding")
def rkd(student_embedding, teacher_embedding, distance_weight: Annotated[float, Ge(0)] = 25.0,
        angle_weight: Annotated[float, Ge(0)] = 50.0, reduction: str = "mean"):
    """Relational KD (Park et al., CVPR 2019): match the geometry of the batch, not points.

    Distance term: smooth-L1 between the B×B distance matrices, each divided by the mean of
    its positive off-diagonal entries. Angle term: smooth-L1 between the B×B×B tensors of
    cosines e_ij·e_ik (normalised difference vectors), as in the standard implementation.

    Batch-level: the per-sample form ("none") of sample i is distance_weight · (mean of row i
    of the distance term) + angle_weight · (mean of the angle-term entries with i as the
    anchor, i.e. first index). Every sample owns equally many entries, so the mean of the
    per-sample values equals the batch loss exactly. Inputs (B, D); extra dims are flattened.
    """
    check_reduction(reduction)
    s = student_embedding.flatten(1)
    t = teacher_embedding.detach().flatten(1)
    if s.size(0) != t.size(0):
        raise ValueError(
            "rkd needs the same batch size for student and teacher; got student "
            f"{tuple(student_embedding.shape)} and teacher {tuple(teacher_embedding.shape)}"
        )
    per_sample = s.new_zeros(s.size(0))
    if distance_weight:
        loss_d = F.smooth_l1_loss(_normalised_distance(s), _normalised_distance(t),
                                  reduction="none")
        per_sample = per_sample + distance_weight * loss_d.mean(dim=1)
    if angle_weight:
        loss_a = F.smooth_l1_loss(_angles(s), _angles(t), reduction="none")
        per_sample = per_sample + angle_weight * loss_a.flatten(1).mean(dim=1)
    return reduce(per_sample, reduction)


rkd.batch_level = True
