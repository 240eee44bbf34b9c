"""DistillBEV (ICCV 2023) feature-imitation losses on bird's-eye-view maps, per image.

A "camera" student's BEV features F̂_S (already mapped to the teacher's width by a 1×1 adapter)
imitate a "LiDAR" teacher's F_T (no adapter on the teacher side), both (B, C, H, W). Where and
how much each cell counts is decided by masks built from the boxes (`kd_engine.parts.bev_masks`)
and by the teacher's own attention:

    A_s = HW · softmax_hw(mean_c |F_T| / τ)        A_c = C · softmax_c(mean_hw |F_T| / τ)
    region(M) = Σ_{c,h,w} M_hw · A_s,hw · A_c,c · (F̂_S − F_T)²_chw          per image
    L_fg = w_fg · region(M_fg · S),  L_bg = w_bg · region(M_bg · S)
    global_channel = Σ_c |mean_hw F_T − mean_hw F̂_S|
    global_spatial = Σ_hw |mean_c F_T − g(mean_c F̂_S)|,   g a 3×3 conv (the method's part)

with S the scale mask. Both attentions have mean 1 (uniform attention leaves the weights alone)
and are computed from the teacher only and detached. The region terms are *sums* over cells,
which is why the paper's weights are small (w_fg = 1.5e-3, w_bg = 4e-2, 0.25 for the channel
and 2.5e-3 for the spatial term); ``reduction="mean"`` divides by the batch as the paper does.
The weights are applied by the method, so these functions return unweighted sums.
"""
from __future__ import annotations

from typing import Annotated

import torch
from annotated_types import Gt

from ._reduce import check_reduction, reduce
from .detection_kd import channel_mask, spatial_mask


def _check_pair(student: torch.Tensor, teacher: torch.Tensor, what: str) -> None:
    if student.dim() != 4 or student.shape != teacher.shape:
        raise ValueError(f"{what} needs (B, C, H, W) student and teacher maps of one shape; got student "
                         f"{tuple(student.shape)} and teacher {tuple(teacher.shape)}")


def teacher_attention(teacher: torch.Tensor, tau: Annotated[float, Gt(0)] = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Detached (A_s (B, H, W), A_c (B, C)) of a teacher map: HW·softmax over cells and C·softmax
    over channels of its mean absolute activation, at temperature ``tau``."""
    if teacher.dim() != 4:
        raise ValueError(f"teacher_attention needs a (B, C, H, W) map, got {tuple(teacher.shape)}")
    teacher = teacher.detach()
    return spatial_mask(teacher, tau), channel_mask(teacher, tau)


def region_imitation(student, teacher, mask, spatial=None, channel=None, reduction: str = "mean"):
    """Per image Σ_{c,h,w} mask_hw · spatial_hw · channel_c · (student − teacher)²_chw.

    ``mask`` (B, H, W) is the cell weight (region × scale); ``spatial`` (B, H, W) and ``channel``
    (B, C) are the attentions (None: ones). The teacher is a target (detached). An all-zero mask
    gives exactly 0.
    """
    check_reduction(reduction)
    _check_pair(student, teacher, "region_imitation")
    B, C, H, W = teacher.shape
    if mask.shape != (B, H, W):
        raise ValueError(f"mask must have shape {(B, H, W)}, got {tuple(mask.shape)}")
    weight = mask if spatial is None else mask * spatial
    per_cell = (student - teacher.detach()).pow(2)
    if channel is not None:
        per_cell = per_cell * channel[:, :, None, None]
    return reduce((per_cell.sum(1) * weight).flatten(1).sum(1), reduction)


def global_channel(student, teacher, reduction: str = "mean"):
    """Per image Σ_c |mean_hw teacher − mean_hw student| (the channel-statistics term)."""
    check_reduction(reduction)
    _check_pair(student, teacher, "global_channel")
    return reduce((teacher.detach().mean((2, 3)) - student.mean((2, 3))).abs().sum(1), reduction)


def global_spatial(student_map, teacher, reduction: str = "mean"):
    """Per image Σ_hw |mean_c teacher − student_map| (the spatial-statistics term).

    ``student_map`` (B, H, W) or (B, 1, H, W) is the student's channel mean after the method's
    3×3 conv; the teacher (B, C, H, W) is averaged over channels here.
    """
    check_reduction(reduction)
    target = teacher.detach().mean(1)
    if student_map.dim() == 4 and student_map.shape[1] == 1:
        student_map = student_map[:, 0]
    if student_map.shape != target.shape:
        raise ValueError(f"global_spatial needs a (B, H, W) student map matching the teacher's "
                         f"{tuple(target.shape)}, got {tuple(student_map.shape)}")
    return reduce((target - student_map).abs().flatten(1).sum(1), reduction)


for _loss in (region_imitation, global_channel, global_spatial):
    _loss.batch_level = False
