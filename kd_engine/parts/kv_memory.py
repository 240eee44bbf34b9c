"""A key–value memory read at every position of a feature map (MemKD's normality memory).

L learned slots, keys K and values V in R^{L×C} (registered parameters, so the losses that shape
them actually train them). A query feature x_p at position p addresses the memory by cosine:
a_p = softmax_l(cos(K_l, x_p) / τ), and recalls r_p = Σ_l a_{p,l} V_l. The block that sits inside
a network hands the next layer fuse(concat(x, r)), a 1×1 convolution back to C channels that
starts as the identity on x and zero on r (reconstruction: the public code widens the next layer
to 2C instead, which a stock backbone cannot take), so a fresh memory leaves the network as it was.
"""
from __future__ import annotations

from typing import Annotated

import torch
from annotated_types import Ge, Gt
import torch.nn.functional as F
from torch import nn


class KeyValueMemory(nn.Module):
    def __init__(self, channels: Annotated[int, Ge(1)], slots: Annotated[int, Ge(1)],
                 temperature: Annotated[float, Gt(0)] = 1.0):
        super().__init__()
        self.keys = nn.Parameter(torch.randn(slots, channels) / channels ** 0.5)
        self.values = nn.Parameter(torch.randn(slots, channels) / channels ** 0.5)
        self.temperature = float(temperature)
        self.fuse = nn.Conv2d(2 * channels, channels, 1, bias=False)
        with torch.no_grad():
            self.fuse.weight.zero_()
            self.fuse.weight[:, :channels, 0, 0] = torch.eye(channels)

    def read(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) queries -> recall (B, C, H, W) and attention (B, H, W, L)."""
        q = F.normalize(x.float().permute(0, 2, 3, 1), dim=-1)
        attention = (q @ F.normalize(self.keys, dim=1).t() / self.temperature).softmax(-1)
        recall = (attention @ self.values).permute(0, 3, 1, 2)
        return recall.to(x.dtype), attention

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused feature for the next layer and the attention of the read."""
        recall, attention = self.read(x)
        return self.fuse(torch.cat([x, recall], dim=1)), attention


def attention_entropy(attention: torch.Tensor) -> torch.Tensor:
    """(B, H, W, L) -> (B,): mean over positions of the read's entropy in nats (log L: uniform,
    the memory tells positions apart not at all; 0: each position reads one slot)."""
    return -(attention * attention.clamp_min(1e-12).log()).sum(-1).flatten(1).mean(1)
