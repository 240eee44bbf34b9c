"""Feature-map distillation through kernels over channels: NST and KDSVD.

Both read a feature map as a set of per-channel activation patterns over spatial positions and
compare statistics of that set, so student and teacher may differ in channel count (NST) or
compare how two layers relate (KDSVD) rather than the maps element by element.
"""
from __future__ import annotations

from typing import Annotated, Sequence

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt

from ._reduce import check_reduction, reduce
from kd_engine.losses.term_registry import term


_POOLS = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def pool_to_common(student: torch.Tensor, teacher: torch.Tensor, name: str):
    """Average-pool whichever (B, C, *spatial) map is larger, per spatial dimension, to the other's size.

    Usually (B, C, H, W); one to three spatial dimensions are accepted. Adaptive average pooling is
    exact when one size divides the other and a fair average otherwise; the teacher is detached
    (it is a target)."""
    if (student.dim() != teacher.dim() or student.dim() not in (3, 4, 5)
            or student.size(0) != teacher.size(0)):
        raise ValueError(f"{name} needs (B, C, H, W) maps with the same batch size; got student "
                         f"{tuple(student.shape)} and teacher {tuple(teacher.shape)}")
    size = tuple(min(a, b) for a, b in zip(student.shape[2:], teacher.shape[2:]))
    pool = _POOLS[len(size)]
    teacher = teacher.detach()
    if tuple(student.shape[2:]) != size:
        student = pool(student, size)
    if tuple(teacher.shape[2:]) != size:
        teacher = pool(teacher, size)
    return student, teacher


def _poly2_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per sample, the mean over channel pairs (i, j) of k(a_i, b_j) = (a_iᵀ b_j)²."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).flatten(1).mean(dim=1)


@term("nst", "maps")
def nst(student_feature, teacher_feature, reduction: str = "mean"):
    """Neuron selectivity transfer (Huang & Wang, 2017): MMD² with the degree-2 polynomial kernel.

    Each map (B, C, H, W) is read per sample as C vectors of length H·W (one per channel), each
    scaled to unit L2 norm over the spatial positions. If the spatial sizes differ, the larger
    map is average-pooled to the smaller. With k(x, y) = (xᵀy)² (the paper's polynomial kernel
    with d = 2, c = 0), per sample:

        MMD² = mean_{i,i'} k(t_i, t_i') + mean_{j,j'} k(s_j, s_j') − 2 · mean_{i,j} k(s_j, t_i),

    which equals ‖(1/C_S) Σ_j s_j s_jᵀ − (1/C_T) Σ_i t_i t_iᵀ‖²_F, so it is ≥ 0, zero for
    identical inputs, and unchanged by scaling either map by a positive factor. The paper's λ/2
    is the term weight. Channel counts may differ.
    """
    check_reduction(reduction)
    s, t = pool_to_common(student_feature, teacher_feature, "nst")
    s = F.normalize(s.flatten(2), p=2, dim=2)
    t = F.normalize(t.flatten(2), p=2, dim=2)
    per_sample = _poly2_mean(t, t) + _poly2_mean(s, s) - 2.0 * _poly2_mean(s, t)
    return reduce(per_sample, reduction)


def _singular_vectors(feature: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k, C): the top-k right singular vectors of each sample's (H·W, C) feature matrix.

    The sign of a singular vector is arbitrary; it is fixed so that its left (spatial) partner
    sums to a non-negative value, i.e. the pattern responds positively on average over the
    positions. This makes the vectors comparable between two layers and two networks."""
    x = feature.flatten(2).transpose(1, 2)  # (B, HW, C)
    u, _, vh = torch.linalg.svd(x, full_matrices=False)
    if vh.size(1) < k:
        raise ValueError(f"kdsvd: k={k} singular vectors asked, but a (H·W, C) = "
                         f"{tuple(x.shape[1:])} map has only {vh.size(1)}")
    sign = torch.where(u[:, :, :k].sum(dim=1) >= 0, 1.0, -1.0).to(x.dtype)  # (B, k)
    return vh[:, :k, :] * sign.unsqueeze(2)


def _layer_relation(front: torch.Tensor, back: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, k, C_front, C_back): RBF exp(−(v_front[c] − v_back[c'])² / σ) for each vector pair."""
    return torch.exp(-(front.unsqueeze(3) - back.unsqueeze(2)).pow(2) / sigma)


def kdsvd(student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor],
          k: Annotated[int, Ge(1)] = 1, sigma: Annotated[float, Gt(0)] = 8.0,
          reduction: str = "mean"):
    """Self-supervised KD with singular value decomposition (Lee, Kim & Song, ECCV 2018).

    Each network is read at L ≥ 2 points (shallow to deep). At every point, each sample's
    feature map is reshaped to an (H·W, C) matrix and compressed by truncated SVD to its top-k
    right singular vectors (channel space, sign fixed as in ``_singular_vectors``). The knowledge
    is how consecutive points relate: for points a and b, the RBF correlation
    G[l, c, c'] = exp(−(v_a,l[c] − v_b,l[c'])² / σ) between the l-th vectors (σ = 8). Per sample:
    Σ over consecutive pairs of Σ (G_S − G_T)². Student and teacher need the same channel count
    at each point (spatial sizes may differ). Gradients through the SVD are unstable when two
    singular values coincide; non-finite entries are set to 0, so one degenerate sample does not
    poison the batch.

    Variant: no singular-value weighting of the vectors (with the default k = 1 it would be a
    no-op) and sign fixing by the spatial partner rather than by matching to the teacher.
    """
    check_reduction(reduction)
    if len(student_features) != len(teacher_features) or len(student_features) < 2:
        raise ValueError("kdsvd needs the same number (at least 2) of student and teacher maps; "
                         f"got {len(student_features)} and {len(teacher_features)}")
    for s, t in zip(student_features, teacher_features):
        if s.dim() != 4 or t.dim() != 4 or s.shape[:2] != t.shape[:2]:
            raise ValueError("kdsvd needs (B, C, H, W) maps with equal batch and channel counts at "
                             f"each point; got student {tuple(s.shape)} and teacher {tuple(t.shape)}")
    v_s = [_singular_vectors(f, k) for f in student_features]
    v_t = [_singular_vectors(f.detach(), k) for f in teacher_features]
    per_sample = student_features[0].new_zeros(student_features[0].size(0))
    for a in range(len(v_s) - 1):
        diff = (_layer_relation(v_s[a], v_s[a + 1], sigma)
                - _layer_relation(v_t[a], v_t[a + 1], sigma)).pow(2)
        per_sample = per_sample + torch.nan_to_num(diff, nan=0.0, posinf=0.0).flatten(1).sum(dim=1)
    return reduce(per_sample, reduction)


nst.batch_level = False
kdsvd.batch_level = False
