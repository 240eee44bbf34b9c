"""Between-class and within-class structure distillation (WCBC-IOD, paper 2), with the two class
distance matrices they compare.

A model's class structure is read from class prototypes (`kd_engine.parts.prototypes` makes
them from per-instance values and a class assignment shared by both models): μ_c, the mean
feature of class c's instances, and π_c, the mean of their softened predictions s_i. Two K×K
matrices describe how classes sit relative to each other:

    D_f[c, c'] = ‖μ_c − μ_c'‖₂                 (feature distances, `feature_distance_matrix`)
    D_s[c, c'] = JS(π_c, π_c')                (Jensen–Shannon divergence, nats, `js_matrix`)

Between-class loss (batch level): L_BC = ‖D_f^S − D_f^T‖₁ + ‖D_s^S − D_s^T‖₁. Within-class
loss (per instance i of class c): ω_i [‖(f_i^S − μ_c^S) − (f_i^T − μ_c^T)‖² + KL(s_i^T ‖ s_i^S)],
each instance's offset from its class centre and its own soft prediction, weighted by ω_i.
The teacher's side is detached in both. Both formulas are a reconstruction: the paper gives
the idea (distances between prototypes; offsets from prototypes and instance semantics), not
the equations.
"""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Gt

from ._reduce import check_reduction, reduce
from kd_engine.losses.affinity import relation_matrix


def feature_distance_matrix(prototypes: torch.Tensor) -> torch.Tensor:
    """K×K Euclidean distances between the rows of ``prototypes`` (K, D), zero diagonal, unscaled."""
    return relation_matrix(prototypes, kind="distance", normalize=False)


def js_matrix(distributions: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """K×K Jensen–Shannon divergences (natural log) between the rows of ``distributions`` (K, C),
    each a probability vector: JS(p, q) = ½ KL(p ‖ m) + ½ KL(q ‖ m), m = (p + q)/2. Symmetric,
    zero on the diagonal, at most log 2."""
    if distributions.dim() != 2:
        raise ValueError(f"distributions must be (K, C); got {tuple(distributions.shape)}")
    p = distributions.unsqueeze(1)  # (K, 1, C)
    q = distributions.unsqueeze(0)  # (1, K, C)
    m = 0.5 * (p + q)
    log_m = m.clamp_min(eps).log()
    kl_pm = (torch.xlogy(p, p) - p * log_m).sum(-1)
    kl_qm = (torch.xlogy(q, q) - q * log_m).sum(-1)
    return (0.5 * (kl_pm + kl_qm)).clamp_min(0.0)


def between_class(student_prototypes: torch.Tensor, teacher_prototypes: torch.Tensor,
                  student_distributions: torch.Tensor, teacher_distributions: torch.Tensor,
                  reduction: str = "mean") -> torch.Tensor:
    """L_BC = ‖D_f^S − D_f^T‖₁ + ‖D_s^S − D_s^T‖₁ over K prototypes (features (K, D), soft
    predictions (K, C); the same K classes, in the same order, on both sides).

    Batch level: the per-class form ("none", shape (K,)) of class c is the L1 norm of row c of
    both differences, so ``"sum"`` is L_BC as written and ``"mean"`` is L_BC / K."""
    check_reduction(reduction)
    if student_prototypes.shape != teacher_prototypes.shape or \
            student_distributions.shape != teacher_distributions.shape or \
            student_prototypes.shape[0] != student_distributions.shape[0]:
        raise ValueError("between_class needs (K, D) prototypes and (K, C) distributions of the same K on both "
                         f"sides; got {tuple(student_prototypes.shape)}, {tuple(teacher_prototypes.shape)}, "
                         f"{tuple(student_distributions.shape)}, {tuple(teacher_distributions.shape)}")
    d_f = (feature_distance_matrix(student_prototypes) - feature_distance_matrix(teacher_prototypes.detach())).abs()
    d_s = (js_matrix(student_distributions) - js_matrix(teacher_distributions.detach())).abs()
    return reduce(d_f.sum(1) + d_s.sum(1), reduction)


between_class.batch_level = True


def within_class(student_features: torch.Tensor, teacher_features: torch.Tensor,
                 student_centres: torch.Tensor, teacher_centres: torch.Tensor,
                 student_logits: torch.Tensor, teacher_logits: torch.Tensor, weights: torch.Tensor | None = None,
                 temperature: Annotated[float, Gt(0)] = 2.0, reduction: str = "mean") -> torch.Tensor:
    """Per instance i: ω_i [‖(f_i^S − μ^S_i) − (f_i^T − μ^T_i)‖² + KL(s_i^T ‖ s_i^S)], s = softmax(z/τ).

    ``*_features``, ``*_centres``: (N, D), the instance's feature and its class prototype on each
    side; ``*_logits``: (N, C), the logits the soft predictions come from; ``weights``: (N,) ω
    (None: all 1). The KL is not scaled by τ² (as written in the method's description)."""
    check_reduction(reduction)
    n = student_features.shape[0]
    for name, tensor in (("teacher_features", teacher_features), ("student_centres", student_centres),
                         ("teacher_centres", teacher_centres)):
        if tensor.shape != student_features.shape:
            raise ValueError(f"within_class: {name} has shape {tuple(tensor.shape)}, expected "
                             f"{tuple(student_features.shape)} like student_features")
    if student_logits.shape != teacher_logits.shape or student_logits.shape[0] != n:
        raise ValueError(f"within_class: logits must both be (N={n}, C); got {tuple(student_logits.shape)} "
                         f"and {tuple(teacher_logits.shape)}")
    offset = (student_features - student_centres) - (teacher_features - teacher_centres).detach()
    log_s = F.log_softmax(student_logits / temperature, dim=1)
    log_t = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    kl = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(1)
    per_instance = offset.pow(2).sum(1) + kl
    if weights is not None:
        per_instance = weights.detach() * per_instance
    return reduce(per_instance, reduction)
