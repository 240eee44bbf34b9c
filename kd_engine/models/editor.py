"""The feed-forward editor of generation runs: source image + target class -> edited image.

x' = x + scale · M([x, onehot(c)]), with M an MLP whose last layer starts at zero, so a fresh
editor is the identity and every change it makes is learned (the residual form keeps the
source's content unless a loss asks for a change). Images are (B, 1, H, W) in [0, 1].
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kd_engine.models.registry import MODELS, check_positive_int


@MODELS.register("editor")
class Editor(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: int = 128, scale: float = 1.0):
        super().__init__()
        check_positive_int(hidden=hidden)
        if not isinstance(scale, (int, float)) or scale <= 0:
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.shape, self.num_classes, self.scale = tuple(input_shape), num_classes, float(scale)
        dim = math.prod(self.shape)
        self.hidden1 = nn.Sequential(nn.Linear(dim + num_classes, hidden), nn.SiLU())
        self.hidden2 = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU())
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.feature_layers = ["hidden1", "hidden2"]
        self.embedding_layer = "hidden2"

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        h = self.hidden2(self.hidden1(torch.cat([flat, F.one_hot(target, self.num_classes).float()], 1)))
        return (flat + self.scale * self.out(h)).view(len(x), *self.shape)
