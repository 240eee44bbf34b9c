"""A CNN with a label-query head (ML-Decoder-style, as L2D uses): class queries cross-attend
to the spatial features, giving one embedding per label, e ∈ R^{B×C×d}, and one logit per label
from its own embedding. ``label_embeddings(x)`` returns (e, logits); ``forward`` the logits."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kd_engine.models.registry import MODELS, check_positive_int


@MODELS.register("query_cnn")
class QueryCNN(nn.Module):
    """conv(c1) → conv(c2, stride 2) → tokens → linear to d → C queries × 1 cross-attention
    layer (``heads`` heads) → per-label linear logit z_c = ⟨w_c, e_c⟩ + b_c."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int = 8, dim: int = 16,
                 heads: int = 1):
        super().__init__()
        check_positive_int(width=width, dim=dim, heads=heads)
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        c = int(input_shape[0])
        self.stem = nn.Sequential(nn.Conv2d(c, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * width),
                                  nn.ReLU())
        self.project = nn.Linear(2 * width, dim)
        self.queries = nn.Parameter(torch.randn(num_classes, dim) * dim ** -0.5)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.label_weight = nn.Parameter(torch.randn(num_classes, dim) * dim ** -0.5)
        self.label_bias = nn.Parameter(torch.zeros(num_classes))
        self.feature_layers = ["stem", "body"]
        self.embedding_layer = "project"

    def label_embeddings(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.project(self.body(self.stem(x)).flatten(2).transpose(1, 2))  # (B, HW, d)
        queries = self.queries.unsqueeze(0).expand(x.size(0), -1, -1)
        attended, _ = self.attention(queries, tokens, tokens, need_weights=False)
        e = self.norm(queries + attended)  # (B, C, d)
        return e, (e * self.label_weight).sum(-1) + self.label_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.label_embeddings(x)[1]
