"""Batch augmentations on image tensors (N, C, H, W), drawn from torch's global RNG (seeded per
run and checkpointed by the loop), for methods that make their own views: a mild random affine
(`jitter`, Cr-KD's two views), MDCS's weak/strong pair, WAD's contrastive views. Each is a pure
function of its inputs and the RNG state."""
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


def random_shift(x: torch.Tensor, max_shift: int = 1) -> torch.Tensor:
    """Translate each image by an integer (dy, dx) in [-max_shift, max_shift], zero-filled."""
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), device=x.device)
    rows = (offsets[:, 0:1] + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    out = padded.gather(2, rows.expand(n, c, h, padded.size(3)))
    cols = (offsets[:, 1:2] + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    return out.gather(3, cols.expand(n, c, h, w))


def gaussian_noise(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return x + sigma * torch.randn_like(x) if sigma > 0 else x


def cutout(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero one size×size square per image at a uniformly drawn top-left corner (inside the image)."""
    if size <= 0:
        return x
    n, _, h, w = x.shape
    top = torch.randint(0, h - size + 1, (n, 1, 1), device=x.device)
    left = torch.randint(0, w - size + 1, (n, 1, 1), device=x.device)
    r = torch.arange(h, device=x.device).view(1, h, 1)
    c = torch.arange(w, device=x.device).view(1, 1, w)
    hole = (r >= top) & (r < top + size) & (c >= left) & (c < left + size)
    return x * (~hole).unsqueeze(1).to(x.dtype)


def random_contrast(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Scale each image's deviation from its own mean by a factor drawn from U(low, high)."""
    if low == high == 1.0:
        return x
    factor = torch.empty(x.size(0), 1, 1, 1, device=x.device).uniform_(low, high)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + factor * (x - mean)


def pixel_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero each pixel independently with probability p."""
    return x * (torch.rand_like(x) >= p).to(x.dtype) if p > 0 else x


def weak_view(x: torch.Tensor, shift: int = 1) -> torch.Tensor:
    """MDCS card: weak = ±shift px translation."""
    return random_shift(x, shift)


def strong_view(x: torch.Tensor, shift: int = 1, noise: float = 0.15, cutout_size: int = 3,
                contrast: tuple[float, float] = (0.5, 1.5)) -> torch.Tensor:
    """MDCS card: strong = shift, Gaussian noise σ, a cutout square and random contrast."""
    x = random_contrast(random_shift(x, shift), *contrast)
    return cutout(gaussian_noise(x, noise), cutout_size)
