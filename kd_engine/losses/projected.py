"""Distillation of a 2-D dense feature map into per-point 3-D features through a camera
projection (UP-VL, ICCV 2023, paper 11; the loss form is a reconstruction: the paper describes
it but publishes no code).

Point p of a scene projects to pixel (u, v) of the scene's image. The 2-D teacher gives a dense
feature map F_2D (D, H, W); the 3-D student gives a feature f_3D(p) (D,) per point. Per scene:

    L = mean over visible p of [1 − cos(f_3D(p), sg(F_2D(u, v)))]

"Visible" means the point projects inside the image *and* is the surface the camera sees there
(the caller's z-buffer test). Without the second condition a point hidden behind another object
would be taught the occluder's feature. A scene with no visible point contributes 0 (it has no
target) rather than NaN, and its weight is recorded by the caller as a visible fraction of 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._reduce import check_reduction, reduce


def in_image(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(..., 2) integer (u, v) = (column, row) pixels -> (...) bool: inside a height × width image."""
    u, v = pixels[..., 0], pixels[..., 1]
    return (u >= 0) & (u < width) & (v >= 0) & (v < height)


def gather_pixels(maps: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """The point-to-pixel gatherer: (B, D, H, W) maps and (B, N, 2) integer (u, v) pixels ->
    (B, N, D) features F[b, :, v, u]. Pixels outside the image read pixel (0, 0) clamped into
    range; mask them with `in_image` (the loss below does)."""
    if maps.dim() != 4 or pixels.dim() != 3 or pixels.shape[-1] != 2 or maps.shape[0] != pixels.shape[0]:
        raise ValueError(f"gather_pixels needs (B, D, H, W) maps and (B, N, 2) pixels, got "
                         f"{tuple(maps.shape)} and {tuple(pixels.shape)}")
    b, d, h, w = maps.shape
    u = pixels[..., 0].long().clamp(0, w - 1)
    v = pixels[..., 1].long().clamp(0, h - 1)
    flat = maps.flatten(2)  # (B, D, H·W)
    index = (v * w + u).unsqueeze(1).expand(b, d, -1)
    return flat.gather(2, index).transpose(1, 2)


def projected_cosine_kd(point_features: torch.Tensor, maps: torch.Tensor, pixels: torch.Tensor,
                        visible: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Per scene: mean over the visible points p of 1 − cos(f_3D(p), sg(F_2D(u_p, v_p))).

    point_features (B, N, D), maps (B, D, H, W), pixels (B, N, 2) integer (u, v), visible (B, N)
    bool (the z-buffer test; padding points are simply not visible). A point whose pixel is
    outside the image is masked whatever ``visible`` says. The teacher map carries no gradient.
    "none" gives (B,) per-scene values, 0 for a scene without a visible point."""
    check_reduction(reduction)
    if point_features.dim() != 3 or point_features.shape[-1] != maps.shape[1] \
            or point_features.shape[:2] != visible.shape or pixels.shape[:2] != visible.shape:
        raise ValueError("projected_cosine_kd needs point_features (B, N, D), maps (B, D, H, W), pixels "
                         f"(B, N, 2) and visible (B, N); got {tuple(point_features.shape)}, "
                         f"{tuple(maps.shape)}, {tuple(pixels.shape)} and {tuple(visible.shape)}")
    mask = visible.bool() & in_image(pixels, maps.shape[2], maps.shape[3])
    target = gather_pixels(maps.detach().float(), pixels)
    distance = 1.0 - F.cosine_similarity(point_features.float(), target, dim=-1, eps=1e-8)  # (B, N)
    weight = mask.float()
    per_scene = (distance * weight).sum(1) / weight.sum(1).clamp_min(1.0)
    return reduce(per_scene, reduction)
