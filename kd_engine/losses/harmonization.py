"""Losses of image harmonization: foreground-weighted reconstruction and the foreground–background
relation that GiftNet distils from the real image into the composite's features.

All take per-image tensors and reduce over the batch with ``reduction`` ("none": one value per
image), like every loss of the engine.
"""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Ge

from ._reduce import check_reduction, reduce
from kd_engine.models.film_unet import bottleneck_mask
from kd_engine.models.taps import feature_taps

EPS = 1e-8


def _check_images(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
    if pred.dim() != 4 or pred.shape != target.shape or mask.shape != (pred.shape[0], *pred.shape[2:]):
        raise ValueError(f"images must be (B, C, H, W) with a (B, H, W) mask; got {tuple(pred.shape)}, "
                         f"{tuple(target.shape)} and mask {tuple(mask.shape)}")


def foreground_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, reduction: str = "mean"):
    """fMSE per image: Σ_{pixels, channels} m·(Î − I)² / (C · Σ m), the mean squared error over the
    foreground pixels only (0 for an image without foreground)."""
    check_reduction(reduction)
    _check_images(pred, target, mask)
    m = mask.unsqueeze(1).float()
    error = ((pred - target) ** 2 * m).sum((1, 2, 3))
    return reduce(error / (pred.shape[1] * m.sum((1, 2, 3))).clamp_min(EPS), reduction)


def harmonization_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                       fg_weight: Annotated[float, Ge(0)] = 1.0, reduction: str = "mean"):
    """Foreground-weighted reconstruction per image: MSE over the whole image + fg_weight · fMSE.
    The foreground is usually a small part of the image; without the second term its error is
    diluted by the background, which a composite already gets right."""
    check_reduction(reduction)
    _check_images(pred, target, mask)
    mse = ((pred - target) ** 2).flatten(1).mean(1)
    return reduce(mse + fg_weight * foreground_mse(pred, target, mask, reduction="none"), reduction)


def quadrant_prototypes(features: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
    """(B, 4, C) background prototypes: the features averaged over the background positions of each
    quadrant of the (B, C, h, w) grid; ``fg`` (B, 1, h, w) is the foreground share of each cell
    (its complement weights the average). A quadrant without background gives a zero prototype."""
    bg = 1.0 - fg
    h, w = features.shape[-2:]
    out = []
    for rows in (slice(0, h // 2), slice(h // 2, h)):
        for cols in (slice(0, w // 2), slice(w // 2, w)):
            weight = bg[:, :, rows, cols]
            out.append((features[:, :, rows, cols] * weight).sum((2, 3)) / weight.sum((2, 3)).clamp_min(EPS))
    return torch.stack(out, dim=1)


def fg_bg_relation(features: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
    """(B, h·w, 4) relation R[i, k] = cos(F_i, b_k) between every position i and the 4 background
    prototypes b_k; the foreground rows are those with ``fg`` > 0.5 (``relation_l1`` masks them)."""
    protos = quadrant_prototypes(features, fg)                      # (B, 4, C)
    positions = features.flatten(2).transpose(1, 2)                # (B, hw, C)
    return F.cosine_similarity(positions.unsqueeze(2), protos.unsqueeze(1), dim=-1, eps=EPS)


def relation_l1(student_relation: torch.Tensor, teacher_relation: torch.Tensor, fg: torch.Tensor,
                reduction: str = "mean"):
    """Per image: the mean over foreground positions (``fg`` > 0.5) and prototypes of
    |R_student − R_teacher|; the teacher's relation is detached (stop-gradient: the real-image path
    is a target, so the two paths cannot drift together to make the loss trivially small)."""
    check_reduction(reduction)
    if student_relation.shape != teacher_relation.shape:
        raise ValueError(f"relations differ in shape: {tuple(student_relation.shape)} and "
                         f"{tuple(teacher_relation.shape)}")
    keep = (fg.flatten(1) > 0.5).float().unsqueeze(-1)               # (B, hw, 1)
    gap = (student_relation - teacher_relation.detach()).abs() * keep
    per_image = gap.sum((1, 2)) / (keep.sum((1, 2)) * student_relation.shape[-1]).clamp_min(1.0)
    return reduce(per_image, reduction)


def relations(model, x: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(output, relation (B, hw, 4) of the model's tapped ``layer``, foreground share (B, 1, h, w))
    of one pass over x = [RGB, mask]: what the method distils and the task stores for the dashboard."""
    with feature_taps(model, [layer]) as feats:
        out = model(x)
    features = feats[layer]
    fg = bottleneck_mask(x[:, 3], features.shape[-2:])
    return out, fg_bg_relation(features, fg), fg
