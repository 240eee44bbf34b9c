"""A two-tower image–text model (a small CLIP-like network) for caption runs.

Image tower: the engine's tiny ViT (`kd_engine.models.vit.ViT`) whose head maps the class token
into the shared embedding space. Text tower: token embedding + learned positions → pre-norm
transformer blocks (the ViT's `Block`, with its fused qkv) → LayerNorm → mean over the caption's
tokens → linear map into the same space. Both embeddings are L2-normalised, so

    affinity(image i, caption j) = logit_scale · ⟨I_i, X_j⟩ ∈ [−logit_scale, logit_scale].

``forward(x, tokens)`` gives the (B, B) image→text affinities of a batch of pairs (row i: image
i against every caption of the batch); its transpose is text→image. ``logit_scale`` is fixed
(not learned) so a run logs the one value it used. ``num_classes`` is not used: a two-tower
model names classes by captions (`kd_engine.data.captions.class_prompts`).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kd_engine.models.registry import MODELS, check_positive_int
from kd_engine.models.vit import Block, ViT


class TextTower(nn.Module):
    """tokens (B, L) → (B, embed_dim) unnormalised caption embeddings."""

    def __init__(self, vocab: int, length: int, dim: int, depth: int, heads: int, mlp_ratio: float,
                 embed_dim: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"text heads {heads} must divide text dim {dim}")
        self.vocab, self.length = vocab, length
        self.token_embed = nn.Embedding(vocab, dim)
        self.pos_embed = nn.Parameter(torch.randn(1, length, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, embed_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.shape[1] != self.length:
            raise ValueError(f"text tower needs (B, {self.length}) token ids, got {tuple(tokens.shape)}")
        h = self.token_embed(tokens) + self.pos_embed
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).mean(1))


@MODELS.register("two_tower")
class TwoTower(nn.Module):
    """Image ViT + text transformer into one ``embed_dim`` space (see the module docstring)."""

    def __init__(self, input_shape: Sequence[int], num_classes: int = 10, embed_dim: int = 32, patch: int = 4,
                 image_dim: int = 32, image_depth: int = 2, image_heads: int = 2, text_dim: int = 32,
                 text_depth: int = 2, text_heads: int = 2, mlp_ratio: float = 2.0, vocab: int = 19,
                 length: int = 4, logit_scale: float = 20.0):
        super().__init__()
        check_positive_int(embed_dim=embed_dim, text_dim=text_dim, text_depth=text_depth, text_heads=text_heads,
                           vocab=vocab, length=length)
        if not isinstance(logit_scale, (int, float)) or logit_scale <= 0:
            raise ValueError(f"logit_scale must be positive, got {logit_scale!r}")
        self.image = ViT(input_shape, embed_dim, patch=patch, dim=image_dim, depth=image_depth, heads=image_heads,
                         mlp_ratio=mlp_ratio)
        self.text = TextTower(vocab, length, text_dim, text_depth, text_heads, float(mlp_ratio), embed_dim)
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)), persistent=False)
        self.feature_layers = [f"image.blocks.{i}" for i in range(image_depth)] + \
            [f"text.blocks.{i}" for i in range(text_depth)]
        self.embedding_layer = "image.embed"

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images → (B, embed_dim) L2-normalised embeddings."""
        return F.normalize(self.image(x), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids → (B, embed_dim) L2-normalised embeddings."""
        return F.normalize(self.text(tokens), dim=-1)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B, B) image→text affinities logit_scale · I Xᵀ of a batch of pairs."""
        return self.logit_scale * self.encode_image(x) @ self.encode_text(tokens).T
