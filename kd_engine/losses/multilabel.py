"""Multi-label losses (L2D, paper 25): summed BCE and the label-wise embedding structure losses.

Structure losses compare normalised Euclidean distance matrices of embeddings within groups:
across the positive instances of a class (class-aware, CD) and across the positive labels of an
instance (instance-aware, ID). Each group's matrices are divided by their mean off-diagonal
distance (+ε; the teacher side without gradient) and compared with summed smooth-L1; a group
with fewer than two members contributes 0. The teacher and student widths may differ.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._reduce import check_reduction, reduce


def bce_sum(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Per sample Σ_c BCE(σ(z_c), y_c) (L2D's summed hard loss)."""
    check_reduction(reduction)
    return reduce(F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none").sum(1), reduction)


def _distances(e: torch.Tensor) -> torch.Tensor:
    """(G, K, d) -> (G, K, K) Euclidean distances (clamped before the root: finite gradients)."""
    sq = e.pow(2).sum(-1)
    d2 = sq.unsqueeze(2) + sq.unsqueeze(1) - 2.0 * e @ e.transpose(1, 2)
    return d2.clamp_min(1e-12).sqrt()


def structure_rows(student: torch.Tensor, teacher: torch.Tensor, members: torch.Tensor,
                   eps: float = 1e-8) -> torch.Tensor:
    """(G, K, d_s), (G, K, d_t) embeddings and (G, K) membership -> (G, K): for each group and
    member k, Σ_j smoothL1(D̂_S[k, j], D̂_T[k, j]) over the other members j, where
    D̂ = D / (mean off-diagonal member distance + ε). Non-members' rows are 0."""
    m = members.bool()
    pair = (m.unsqueeze(2) & m.unsqueeze(1)).float()
    pair = pair * (1.0 - torch.eye(m.size(1), device=pair.device))
    count = pair.sum((1, 2)).clamp_min(1.0)
    ds, dt = _distances(student.float()), _distances(teacher.detach().float())
    ns = ds / ((ds * pair).sum((1, 2)) / count + eps).view(-1, 1, 1)
    nt = dt / ((dt * pair).sum((1, 2)) / count + eps).view(-1, 1, 1)
    return (F.smooth_l1_loss(ns, nt, reduction="none", beta=1.0) * pair).sum(2)


def class_structure(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor,
                    reduction: str = "mean") -> torch.Tensor:
    """CD. Embeddings (B, C, d); per sample i: Σ over its positive classes c of its row in class
    c's instance-distance comparison. The batch loss ("mean") is Σ_c HuberDist_c / B."""
    check_reduction(reduction)
    rows = structure_rows(student.transpose(0, 1), teacher.transpose(0, 1), targets.t() > 0)  # (C, B)
    return reduce(rows.sum(0), reduction)


def instance_structure(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor,
                       reduction: str = "mean") -> torch.Tensor:
    """ID. Per sample i: HuberDist over the embeddings of its positive labels (0 with < 2
    labels). The batch loss ("mean") is Σ_i HuberDist_i / B."""
    check_reduction(reduction)
    return reduce(structure_rows(student, teacher, targets > 0).sum(1), reduction)


for _fn in (bce_sum, instance_structure):
    _fn.batch_level = False
class_structure.batch_level = True
