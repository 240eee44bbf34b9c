"""Region pairs on BEV feature maps: where a student and its teacher are compared, how far apart
they are there, and how much weight each compared region gets.

A region is the window × window block of cells around a centre cell, the same block in the
student's (adapted) and the teacher's map. Its disparity is 1 − cos between the two blocks
flattened into vectors (all channels, all cells of the block; zero padding beyond the grid),
so 0 means the student already points where the teacher does and 2 means it points away.
`balanced_mask` spreads each selected region's weight evenly over its cells inside the grid;
the selected foreground regions share ``fg_share`` of a scene's weight and the background ones
the rest, normalised per scene (never per batch: a batch with many crowded scenes must not
starve the sparse ones).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def disparity_map(student: torch.Tensor, teacher: torch.Tensor, window: int = 3) -> torch.Tensor:
    """(B, H, W): 1 − cos of the window × window blocks of (B, C, H, W) maps centred on each cell."""
    if student.shape != teacher.shape or student.dim() != 4:
        raise ValueError(f"student and teacher maps must be (B, C, H, W) of one shape; got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    b, _, h, w = student.shape
    s = F.unfold(student.float(), window, padding=window // 2)  # (B, C·window², H·W)
    t = F.unfold(teacher.float(), window, padding=window // 2)
    return (1.0 - F.cosine_similarity(s, t, dim=1, eps=1e-8)).view(b, h, w)


def near(mask: torch.Tensor, window: int = 3) -> torch.Tensor:
    """(B, H, W) bool: cells whose window × window block holds a nonzero cell of ``mask``."""
    return F.max_pool2d(mask.float()[:, None], window, stride=1, padding=window // 2)[:, 0] > 0


def select_regions(scores: torch.Tensor, candidates: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (up to) k candidate cells of highest score per scene: flat cell indices (B, k) and a
    (B, k) bool that is False where a scene has fewer than k candidates."""
    flat = torch.where(candidates.flatten(1), scores.flatten(1).float(), torch.full_like(scores.flatten(1).float(), -torch.inf))
    values, index = flat.topk(min(k, flat.shape[1]), dim=1)
    return index, torch.isfinite(values)


def balanced_mask(index: torch.Tensor, valid: torch.Tensor, foreground: torch.Tensor, size: tuple[int, int],
                  fg_share: float = 0.5, window: int = 3) -> torch.Tensor:
    """(B, H, W) weights: each valid region in ``index`` (B, R) gets fg_share / (its scene's valid
    foreground regions) or (1 − fg_share) / (background ones), by ``foreground`` (B, R) bool,
    spread evenly over the cells of its window inside the grid; overlapping windows add up. A
    scene whose selection has no foreground (or no background) region leaves that share unused."""
    h, w = size
    fg, bg = (valid & foreground).float(), (valid & ~foreground).float()
    per_region = (fg_share * fg / fg.sum(1, keepdim=True).clamp(min=1)
                  + (1 - fg_share) * bg / bg.sum(1, keepdim=True).clamp(min=1))
    ones = torch.ones(1, 1, window, window, device=index.device)
    cells = F.conv2d(torch.ones(1, 1, h, w, device=index.device), ones, padding=window // 2).flatten()  # cells in window
    centre = torch.zeros(index.shape[0], h * w, device=index.device).scatter_add_(1, index, per_region / cells[index])
    return F.conv2d(centre.view(-1, 1, h, w), ones, padding=window // 2)[:, 0]


class VariationalAdapter(nn.Module):
    """A 1×1 convolution from the student's width to the teacher's that outputs a Gaussian, mean
    μ and log variance log σ² per channel and cell; in training it passes on a sample μ + σ·ε,
    in evaluation μ. Penalising KL(N(μ, σ²) ‖ N(0, I)) (`kd_engine.losses.bev.gaussian_kl`) makes
    it a variational information bottleneck: only what helps imitate the teacher is worth the
    cost of a confident (low-variance) code."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.mu = nn.Conv2d(in_channels, out_channels, 1)
        self.logvar = nn.Conv2d(in_channels, out_channels, 1)
        nn.init.constant_(self.logvar.bias, -4.0)  # start nearly deterministic (σ ≈ 0.14)
        nn.init.zeros_(self.logvar.weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sample, μ, log σ²)."""
        mu, logvar = self.mu(x), self.logvar(x).clamp(-10.0, 5.0)
        if not self.training:
            return mu, mu, logvar
        return mu + torch.randn_like(mu) * (0.5 * logvar).exp(), mu, logvar
