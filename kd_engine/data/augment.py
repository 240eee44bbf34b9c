"""Batch augmentation on tensors (for two-view trainers): a mild random affine (rotation, scale,
shift in pixels) by grid sampling, then Gaussian noise. Uses the global torch RNG (seeded by
the run), so a run's views are reproducible."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def jitter(x: torch.Tensor, shift_px: float = 1.0, noise: float = 0.05, rotate_deg: float = 10.0,
           scale: float = 0.1) -> torch.Tensor:
    """One random view of a (B, C, H, W) batch: per image an angle in ±rotate_deg, a scale in
    1 ± scale, a shift of up to ±shift_px pixels per axis (bilinear, zeros outside), plus
    N(0, noise²) pixel noise. All zero gives back ``x`` unchanged."""
    b, _, h, w = x.shape
    angle = (torch.rand(b, device=x.device) * 2 - 1) * math.radians(rotate_deg)
    factor = 1 + (torch.rand(b, device=x.device) * 2 - 1) * scale
    shift = (torch.rand(b, 2, device=x.device) * 2 - 1) * shift_px
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0] * 2 / w], 1),
                         torch.stack([sin, cos, shift[:, 1] * 2 / h], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + noise * torch.randn_like(out) if noise > 0 else out
