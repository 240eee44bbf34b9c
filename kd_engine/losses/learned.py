"""Pure parts of the feature-distillation losses that train their own modules: VID, OFD,
ReviewKD's hierarchical context loss and CRD's NCE objective.

The learnable parts (VID's regressor and variances, OFD's connector, ReviewKD's fusion modules,
CRD's embedding heads and memory bank) live in ``kd_engine.losses.term_modules``; the functions
here take the already-transformed tensors, so each formula can be checked on its own.
"""
from __future__ import annotations

import math
from typing import Annotated, Sequence

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt

from ._reduce import check_reduction, reduce


def _same_shape(name: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape or student.dim() < 2:
        raise ValueError(f"{name} needs (B, ...) tensors of one shape; got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")


def vid(predicted_mean, teacher_feature, variance, reduction: str = "mean"):
    """Variational information distillation (Ahn et al., CVPR 2019).

    The teacher feature t is modelled as Gaussian given the student: mean μ(s) (a learned
    regressor's output, ``predicted_mean``) and one variance σ_c² per channel (``variance``,
    shape (C,), positive; the module keeps it as softplus(α_c) + ε). The loss is the negative
    log-likelihood without its constant: per sample, the mean over channels and positions of

        ½ · ((t − μ)² / σ_c² + log σ_c²).

    Minimising it maximises a variational lower bound on the mutual information between the
    two features. It can be negative (small variances); at μ = t its gradient pushes σ² down.
    """
    check_reduction(reduction)
    teacher = teacher_feature.detach()
    _same_shape("vid", predicted_mean, teacher)
    if variance.dim() != 1 or variance.numel() != teacher.size(1):
        raise ValueError(f"vid needs one variance per channel ({teacher.size(1)}); got shape "
                         f"{tuple(variance.shape)}")
    var = variance.view(1, -1, *([1] * (teacher.dim() - 2)))
    nll = 0.5 * ((teacher - predicted_mean).pow(2) / var + torch.log(var))
    return reduce(nll.flatten(1).mean(dim=1), reduction)


def ofd_margin(bn_mean: torch.Tensor, bn_std: torch.Tensor) -> torch.Tensor:
    """Per-channel margin m = E[x | x < 0] for x ~ N(μ, σ²) (Heo et al., ICCV 2019).

    The teacher's pre-ReLU response is modelled by its BatchNorm's output distribution (μ = β,
    σ = |γ|). m = μ − σ·φ(μ/σ) / Φ(−μ/σ); where Φ(−μ/σ) < 10⁻³ (almost no negative mass) the
    authors' fallback m = −3σ is used."""
    std = bn_std.abs().clamp_min(1e-12)
    z = bn_mean / std
    normal = torch.distributions.Normal(torch.zeros_like(z), torch.ones_like(z))
    tail = normal.cdf(-z)
    density = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    margin = bn_mean - std * density / tail.clamp_min(1e-12)
    return torch.where(tail > 1e-3, margin, -3.0 * std)


def ofd(student_feature, teacher_feature, margin, reduction: str = "mean"):
    """Overhaul of feature distillation (Heo et al., ICCV 2019): partial L2 on pre-ReLU features.

    ``student_feature`` is the connector's output r(s) and ``teacher_feature`` the teacher's
    pre-ReLU map, both (B, C, ...); ``margin`` has shape (C,) (``ofd_margin``). The target is
    t̂ = max(t, m): negative teacher responses only say "below zero", so they are lifted to the
    margin. The partial L2 skips positions where both are already inactive:

        per sample = Σ over channels and positions of (r(s) − t̂)² · [r(s) > t̂ or t̂ > 0].

    A sum, as in the paper (the authors' training divides it by about 10³ via the term weight).
    """
    check_reduction(reduction)
    teacher = teacher_feature.detach()
    _same_shape("ofd", student_feature, teacher)
    if margin.dim() != 1 or margin.numel() != teacher.size(1):
        raise ValueError(f"ofd needs one margin per channel ({teacher.size(1)}); got shape "
                         f"{tuple(margin.shape)}")
    target = torch.maximum(teacher, margin.view(1, -1, *([1] * (teacher.dim() - 2))).to(teacher))
    active = (student_feature > target) | (target > 0)
    per_sample = ((student_feature - target).pow(2) * active).flatten(1).sum(dim=1)
    return reduce(per_sample, reduction)


def hcl(student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor],
        levels: Sequence[int] = (4, 2, 1), reduction: str = "mean"):
    """Hierarchical context loss of ReviewKD (Chen et al., CVPR 2021).

    For each (fused student, teacher) map pair of shape (B, C, H, W): the mean squared error at
    full resolution (weight 1) plus the MSE between both maps average-pooled to each L×L in
    ``levels`` smaller than H (weights ½, ¼, …, halving per level), divided by the total weight.
    Per sample: Σ over pairs of that weighted mean, each MSE averaged over the sample's elements.
    """
    check_reduction(reduction)
    if len(student_features) != len(teacher_features) or not student_features:
        raise ValueError("hcl needs the same (non-zero) number of student and teacher maps; got "
                         f"{len(student_features)} and {len(teacher_features)}")
    total = None
    for s, t in zip(student_features, teacher_features):
        t = t.detach()
        _same_shape("hcl", s, t)
        weight, weights_sum = 1.0, 1.0
        pair = (s - t).pow(2).flatten(1).mean(dim=1)
        for level in levels:
            if level >= s.size(2):
                continue
            weight /= 2.0
            pooled = (F.adaptive_avg_pool2d(s, level) - F.adaptive_avg_pool2d(t, level)).pow(2)
            pair = pair + weight * pooled.flatten(1).mean(dim=1)
            weights_sum += weight
        total = pair / weights_sum if total is None else total + pair / weights_sum
    return reduce(total, reduction)


def nce(scores, n_data: Annotated[int, Ge(1)], reduction: str = "mean", eps: float = 1e-7):
    """Noise-contrastive estimation loss of CRD (Tian et al., ICLR 2020).

    ``scores`` (B, 1 + K): column 0 the positive pair's h = exp(f·g / τ) / Z, columns 1..K the
    K negatives'. With noise probability P_n = 1 / N (N = ``n_data``, uniform negatives):
    P(real | x) = x / (x + K·P_n). Per sample:
    −log P(real | positive) − Σ_k log(1 − P(real | negative_k)), with ``eps`` in denominators.
    """
    check_reduction(reduction)
    if scores.dim() != 2 or scores.size(1) < 2:
        raise ValueError(f"nce needs scores of shape (B, 1 + K) with K ≥ 1; got {tuple(scores.shape)}")
    noise = (scores.size(1) - 1) / float(n_data)
    log_pos = torch.log(scores[:, 0] / (scores[:, 0] + noise + eps))
    log_neg = torch.log(noise / (scores[:, 1:] + noise + eps)).sum(dim=1)
    return reduce(-(log_pos + log_neg), reduction)


def contrast_scores(memory_rows: torch.Tensor, anchor: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, 1 + K) unnormalised scores exp(⟨memory row, anchor⟩ / τ), in float32 even under autocast:
    with τ = 0.07 the exponent reaches ±14, too coarse for bf16 and beyond fp16's range."""
    with torch.autocast(device_type=anchor.device.type, enabled=False):
        dots = torch.bmm(memory_rows.float(), anchor.float().unsqueeze(2)).squeeze(2)
        return torch.exp(dots / temperature)


def crd(student_embed, teacher_embed, student_contrast, teacher_contrast, z_student, z_teacher,
        n_data: Annotated[int, Ge(1)], temperature: Annotated[float, Gt(0)] = 0.07,
        reduction: str = "mean"):
    """Contrastive representation distillation (Tian et al., ICLR 2020), both directions.

    ``student_embed``/``teacher_embed`` (B, D) are the unit-length embeddings of the batch;
    ``teacher_contrast`` (B, 1 + K, D) holds, per sample, the teacher memory row of the same
    instance (column 0) and K other instances' rows, ``student_contrast`` the same rows of the
    student memory. h = exp(⟨·,·⟩ / τ) / Z, with Z (``z_student``, ``z_teacher``) the
    normalising constants the memory module fixes on its first batch. Per instance: its NCE
    loss with the student embedding as anchor against the teacher memory, plus the one with the
    teacher embedding as anchor against the student memory. The teacher embedding is a target
    only through the memory; its own head is trained by the second direction, as in the paper.
    """
    check_reduction(reduction)
    anchor_s = contrast_scores(teacher_contrast, student_embed, temperature) / z_student
    anchor_t = contrast_scores(student_contrast, teacher_embed, temperature) / z_teacher
    return reduce(nce(anchor_s, n_data, "none") + nce(anchor_t, n_data, "none"), reduction)


for _fn in (vid, ofd, hcl, nce, crd):
    _fn.batch_level = False
