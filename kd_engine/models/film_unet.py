"""A small U-Net for image harmonization, with optional global FiLM guidance at the bottleneck.

Input [I_comp, mask] (B, 4, H, W); output the harmonized RGB image (B, 3, H, W), predicted as a
correction added to the composite inside the mask (the background is already right):
Î = I_comp + mask · out(decoder), with ``out`` starting at zero (a fresh network returns
the composite unchanged). Encoder widths w, 2w, 4w (8 / 16 / 32 by default) at
strides 1, 2, 4; the decoder mirrors it with skip connections.

``film: true`` (GiftNet's global guidance, reconstruction): g is the average of the bottleneck
features over background positions (the mask pooled to the bottleneck grid), a linear layer maps
it to (γ, β), and inside the foreground the features become F̃ = (1 + γ) ⊙ F + β (γ, β start at
0, so a fresh FiLM is the identity). Without FiLM, F̃ = F. The taps ``encoder`` (F, the
encoder's bottleneck output) and ``transformed`` (F̃) are what the relation loss reads.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kd_engine.models.registry import MODELS, check_positive_int


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(1, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, 1, 1), nn.SiLU())


def bottleneck_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, h, w) share of foreground pixels in each bottleneck cell of a (B, H, W) mask."""
    return F.adaptive_avg_pool2d(mask.unsqueeze(1).float(), size)


class FiLM(nn.Module):
    """F̃ = F + m ⊙ (γ(g) ⊙ F + β(g)), g the background-average of F, m the foreground share."""

    def __init__(self, channels: int):
        super().__init__()
        self.affine = nn.Linear(channels, 2 * channels)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(self, features: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
        bg = 1.0 - fg
        g = (features * bg).sum((2, 3)) / bg.sum((2, 3)).clamp_min(1e-6)
        gamma, beta = self.affine(g).chunk(2, dim=1)
        return features + fg * (gamma[..., None, None] * features + beta[..., None, None])


class Identity2(nn.Module):
    """The no-FiLM path, as a module so ``transformed`` can be tapped either way."""

    def forward(self, features: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
        return features


@MODELS.register("film_unet")
class FiLMUNet(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int = 3, width: int = 8, film: bool = False):
        super().__init__()
        check_positive_int(width=width)
        if not isinstance(film, bool):
            raise ValueError(f"film must be true or false, got {film!r}")
        channels, height, wide = (int(s) for s in input_shape)
        if channels != 4 or height % 4 or wide % 4:
            raise ValueError(f"film_unet takes [RGB, mask] inputs (4 channels) with sides a multiple of 4, got "
                             f"{tuple(input_shape)}")
        w = width
        self.enc1, self.enc2, self.encoder = _block(4, w), _block(w, 2 * w, 2), _block(2 * w, 4 * w, 2)
        self.transformed = FiLM(4 * w) if film else Identity2()
        self.dec2 = _block(4 * w + 2 * w, 2 * w)
        self.dec1 = _block(2 * w + w, w)
        self.out = nn.Conv2d(w, 3, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.feature_layers = ["enc1", "enc2", "encoder", "transformed", "dec2", "dec1"]
        self.embedding_layer = "encoder"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb, mask = x[:, :3], x[:, 3]
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        bottom = self.encoder(e2)
        fg = bottleneck_mask(mask, bottom.shape[-2:])
        bottom = self.transformed(bottom, fg)
        d2 = self.dec2(torch.cat([F.interpolate(bottom, size=e2.shape[-2:], mode="nearest"), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=e1.shape[-2:], mode="nearest"), e1], 1))
        return rgb + mask.unsqueeze(1) * self.out(d1)
