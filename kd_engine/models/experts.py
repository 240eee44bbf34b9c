"""A shared MLP trunk with E expert heads (MDCS, in miniature): trunk in → hidden, then per
expert hidden → expert_hidden → cosine classifier with scale s. The model's output is the mean
of the experts' logits; ``expert_logits`` gives them one by one, (E, B, C)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kd_engine.models.registry import MODELS, check_positive_int


class CosineClassifier(nn.Module):
    """logits = s · cos(h, w_c): both the feature and each class weight are L2-normalised."""

    def __init__(self, in_features: int, num_classes: int, scale: float):
        super().__init__()
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.randn(num_classes, in_features) / math.sqrt(in_features))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(h, dim=1) @ F.normalize(self.weight, dim=1).t()


@MODELS.register("experts")
class Experts(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int, experts: int = 3,
                 hidden: int = 128, expert_hidden: int = 64, scale: float = 15.0, cosine: bool = True):
        super().__init__()
        check_positive_int(experts=experts, hidden=hidden, expert_hidden=expert_hidden)
        if not isinstance(scale, (int, float)) or scale <= 0:
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        fan_in = math.prod(int(s) for s in input_shape)
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(fan_in, hidden), nn.ReLU())
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, expert_hidden), nn.ReLU(),
                          CosineClassifier(expert_hidden, num_classes, scale) if cosine
                          else nn.Linear(expert_hidden, num_classes))
            for _ in range(experts))
        self.feature_layers = ["trunk"] + [f"experts.{i}.1" for i in range(experts)]
        self.embedding_layer = "trunk"

    def expert_logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        return torch.stack([expert(h) for expert in self.experts])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expert_logits(x).mean(dim=0)
