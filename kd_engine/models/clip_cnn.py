"""A two-layer CNN for short clips whose frames (or frame differences) are stacked as channels:
cheap enough to train several modality teachers and students per minute on a CPU. Max pooling
keeps "where the object is" out of the features, so it learns shape and motion, not position."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kd_engine.models.registry import MODELS, check_positive_int


class GlobalMaxPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3))


@MODELS.register("clip_cnn")
class ClipCNN(nn.Module):
    """conv3x3(C→w) → ReLU → conv3x3 stride 2 (w→2w) → ReLU → global max pool → fc."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int = 16):
        super().__init__()
        check_positive_int(width=width)
        if len(input_shape) != 3:
            raise ValueError(f"clip_cnn needs (channels, height, width) inputs, got {tuple(input_shape)}")
        self.conv1 = nn.Sequential(nn.Conv2d(int(input_shape[0]), width, 3, 1, 1), nn.ReLU(inplace=False))
        self.conv2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(inplace=False))
        self.pool = GlobalMaxPool()
        self.fc = nn.Linear(2 * width, num_classes)
        self.feature_layers = ["conv1", "conv2", "pool"]
        self.embedding_layer = "pool"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.conv2(self.conv1(x))))
