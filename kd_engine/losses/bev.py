"""Losses of BEV heatmap detection and of its distillation (RDD and the feature/logit baselines).

Every loss returns one value per scene with ``reduction="none"``; ``mask`` arguments are (B, H, W)
per-cell weights, normally summing to 1 per scene (a full map: 1/(H·W) everywhere; a selection:
the weights of the selected cells), so the same function serves full-map, foreground and
region-selected distillation and the arms differ only in where the weight sits.
"""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt

from ._reduce import check_reduction, reduce


def _check_same(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"{name}: student and teacher maps must have the same shape (B, C, H, W); got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")


def _check_mask(mask: torch.Tensor, maps: torch.Tensor) -> None:
    if mask.shape != (maps.shape[0], *maps.shape[2:]):
        raise ValueError(f"mask must be (B, H, W) = {(maps.shape[0], *maps.shape[2:])}, got {tuple(mask.shape)}")


def heatmap_focal(logits, target, alpha: Annotated[float, Ge(0)] = 2.0, beta: Annotated[float, Ge(0)] = 4.0,
                  reduction: str = "mean"):
    """CenterNet's penalty-reduced focal loss on sigmoid heatmaps (Zhou et al., 2019).

    With p = σ(logit) and target y ∈ [0, 1] (1 exactly at object centres), per scene
    −(1/max(1, n_centres)) · Σ_cells,classes [y = 1]·(1 − p)^α·log p + [y < 1]·(1 − y)^β·p^α·log(1 − p).
    Cells near a centre (y close to 1) are barely penalised for firing: the Gaussian around each
    centre forgives small localisation errors. Normalising by the scene's centre count keeps a
    crowded scene from outweighing an empty one. Logs come from ``logsigmoid`` (stable).
    """
    check_reduction(reduction)
    if logits.shape != target.shape or logits.dim() != 4:
        raise ValueError(f"logits and target heatmaps must be (B, K, H, W) of one shape; got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")
    z, y = logits.float(), target.float()
    p = torch.sigmoid(z)
    positive = y.eq(1).float()
    pos = positive * (1 - p).pow(alpha) * F.logsigmoid(z)
    neg = (1 - positive) * (1 - y).pow(beta) * p.pow(alpha) * F.logsigmoid(-z)
    count = positive.flatten(1).sum(1).clamp(min=1)
    return reduce(-(pos + neg).flatten(1).sum(1) / count, reduction)


def masked_feature_mse(student, teacher, mask, reduction: str = "mean"):
    """Per scene Σ_cells mask_hw · mean_c (F_S − F_T)²_c,hw (the teacher map is detached).

    The student map is the adapter's output, at the teacher's width. With a mask of 1/(H·W) this
    is FitNet's mean squared error over the whole map (full-map mimicking)."""
    check_reduction(reduction)
    _check_same("masked_feature_mse", student, teacher)
    _check_mask(mask, student)
    per_cell = (student.float() - teacher.detach().float()).pow(2).mean(1)
    return reduce((mask * per_cell).flatten(1).sum(1), reduction)


def binary_kl_map(student_logits, teacher_logits, temperature: Annotated[float, Gt(0)] = 1.0):
    """(B, H, W) map of T² · Σ_classes KL(Bern(σ(t/T)) ‖ Bern(σ(s/T))): each heatmap logit is its
    own Bernoulli (a sigmoid output), so no softmax couples the classes. Teacher detached."""
    _check_same("binary_kl_map", student_logits, teacher_logits)
    T = float(temperature)
    zs, zt = student_logits.float() / T, teacher_logits.detach().float() / T
    p = torch.sigmoid(zt)
    kl = p * (F.logsigmoid(zt) - F.logsigmoid(zs)) + (1 - p) * (F.logsigmoid(-zt) - F.logsigmoid(-zs))
    return kl.sum(1) * T * T


def masked_binary_kl(student_logits, teacher_logits, mask, temperature: Annotated[float, Gt(0)] = 1.0,
                     reduction: str = "mean"):
    """Per scene Σ_cells mask_hw · T² · Σ_c KL(Bern(σ(t_c/T)) ‖ Bern(σ(s_c/T))) (`binary_kl_map`).

    With a mask of 1/(H·W) this is K times `kd_engine.losses.binary.binary_kd` (which also
    averages over the K classes): full-map logit distillation."""
    check_reduction(reduction)
    _check_mask(mask, student_logits)
    return reduce((mask * binary_kl_map(student_logits, teacher_logits, temperature)).flatten(1).sum(1), reduction)


def gaussian_kl(mu, logvar, reduction: str = "mean"):
    """KL(N(μ, σ²) ‖ N(0, I)) of a diagonal Gaussian per cell, ½ Σ_c (μ² + σ² − 1 − log σ²),
    averaged over the cells of each scene: the variational information-bottleneck penalty on
    what the adapter passes on (Alemi et al., 2017). ``mu`` and ``logvar`` are (B, C, H, W)."""
    check_reduction(reduction)
    if mu.shape != logvar.shape or mu.dim() != 4:
        raise ValueError(f"mu and logvar must be (B, C, H, W) of one shape; got {tuple(mu.shape)} and "
                         f"{tuple(logvar.shape)}")
    kl = 0.5 * (mu.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).sum(1)
    return reduce(kl.flatten(1).mean(1), reduction)


for _loss in (heatmap_focal, masked_feature_mse, masked_binary_kl, gaussian_kl):
    _loss.batch_level = False
