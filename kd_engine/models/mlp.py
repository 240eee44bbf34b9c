"""Fully connected student: the cheapest baseline, and a clear capacity gap to a CNN teacher."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from kd_engine.models.registry import MODELS, check_positive_int


@MODELS.register("mlp")
class MLP(nn.Module):
    """flatten -> hidden1..hiddenL (Linear + ReLU [+ Dropout]) -> fc."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: int = 256,
                 layers: int = 2, dropout: float = 0.0):
        super().__init__()
        check_positive_int(hidden=hidden, layers=layers)
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.flatten = nn.Flatten()
        fan_in = math.prod(int(s) for s in input_shape)
        for i in range(1, layers + 1):
            mods: list[nn.Module] = [nn.Linear(fan_in, hidden), nn.ReLU(inplace=False)]
            if dropout > 0:
                mods.append(nn.Dropout(dropout))
            setattr(self, f"hidden{i}", nn.Sequential(*mods))
            fan_in = hidden
        self.num_hidden = layers
        self.fc = nn.Linear(fan_in, num_classes)
        self.feature_layers = [f"hidden{i}" for i in range(1, layers + 1)]
        self.embedding_layer = f"hidden{layers}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        for i in range(1, self.num_hidden + 1):
            x = getattr(self, f"hidden{i}")(x)
        return self.fc(x)
