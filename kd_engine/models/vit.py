"""Tiny Vision Transformer with hand-written attention, so attention maps can be tapped.

``blocks.<i>.attn.probs`` is an ``nn.Identity`` applied to the softmax probabilities
(B, heads, T, T); a forward hook there reads them for attention distillation and plots.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kd_engine.models.registry import MODELS, check_positive_int


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.probs = nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]                      # (B, heads, T, d_head)
        probs = self.probs(torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1))
        out = (probs @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


@MODELS.register("vit")
class ViT(nn.Module):
    """patch_embed -> [cls] + pos -> blocks -> norm -> embed (cls token) -> head."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, patch: int = 2,
                 dim: int = 32, depth: int = 2, heads: int = 4, mlp_ratio: float = 2.0):
        super().__init__()
        check_positive_int(patch=patch, dim=dim, depth=depth, heads=heads)
        if not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio!r}")
        c, h, w = (int(s) for s in input_shape)
        if h % patch or w % patch:
            raise ValueError(f"patch {patch} must divide the image size {h}x{w}")
        if dim % heads:
            raise ValueError(f"heads {heads} must divide dim {dim}")
        self.patch_embed = nn.Conv2d(c, dim, patch, stride=patch)
        self.num_tokens = (h // patch) * (w // patch) + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.num_tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, float(mlp_ratio)) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.embed = nn.Identity()
        self.head = nn.Linear(dim, num_classes)
        self.feature_layers = [f"blocks.{i}" for i in range(depth)] + ["norm"]
        self.attention_layers = [f"blocks.{i}.attn.probs" for i in range(depth)]
        self.embedding_layer = "embed"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)        # (B, T-1, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.head(self.embed(x[:, 0]))
