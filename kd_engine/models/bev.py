"""CenterPoint-lite: a small BEV CNN with a per-class centre heatmap and a box regression head.

input (C, G, G) -> stem (3x3, stride 2: G/2, width w) -> block (w) -> down (2w, G/4) ->
up (back to G/2) -> neck (1x1 over [block, up], then 3x3, w channels) -> heads.
``forward`` returns the heatmap logits (B, K, G/2, G/2); the regression map (B, 4, G/2, G/2:
sub-cell centre offset dx, dy and log length, log width) is read through the ``regression`` tap
(``dense_outputs``), as the dense models expose their extra maps, so everything that expects one
output tensor keeps working. ``neck`` is the BEV feature map that distillation compares.
``in_channels`` (optional) picks the input channels the model reads, so a teacher and a student
can read different modalities stacked in one input (`kd_engine.data.bev_dual`).
The heatmap bias starts at −2.19 (σ = 0.1), CenterNet's prior, so the focal loss does not open
with every background cell predicted at 0.5. Output stride 2 keeps the teacher (width 32) cheap
enough for a 2-core CPU while a pedestrian (0.6 m) still gets its own 1 m output cell.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kd_engine.models.cnn import BasicBlock
from kd_engine.models.registry import MODELS, check_positive_int

HEATMAP_PRIOR = 0.1


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=False))


@MODELS.register("centerpoint_lite")
class CenterPointLite(nn.Module):
    """Widths w (stem, block, neck) and 2w (down); ``output stride`` 2."""

    dense = True
    output_stride = 2

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int = 32,
                 in_channels: list[int] | None = None):
        super().__init__()
        check_positive_int(width=width)
        in_ch, height, wide = (int(s) for s in input_shape)
        self.in_channels = None if in_channels is None else [int(c) for c in in_channels]
        if self.in_channels is not None:
            if not self.in_channels or not all(0 <= c < in_ch for c in self.in_channels):
                raise ValueError(f"in_channels: indices into the input's {in_ch} channels, got {in_channels!r}")
            in_ch = len(self.in_channels)
        if height % 4 or wide % 4:
            raise ValueError(f"BEV grid sides must be multiples of 4 (two stride-2 stages), got {height}x{wide}")
        self.stem = _conv_bn(in_ch, width, 3, 2)
        self.block = BasicBlock(width, width)
        self.down = BasicBlock(width, 2 * width, 2)
        self.neck = nn.Sequential(_conv_bn(3 * width, width, 1), _conv_bn(width, width, 3))
        self.heatmap = nn.Conv2d(width, num_classes, 1)
        self.regression = nn.Conv2d(width, 4, 1)
        nn.init.constant_(self.heatmap.bias, -math.log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR))
        self.feature_layers = ["stem", "block", "down", "neck", "heatmap"]
        self.embedding_layer = "neck"
        self.dense_outputs = {"regression": "regression"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels is not None:
            x = x[:, self.in_channels]
        block = self.block(self.stem(x))
        up = F.interpolate(self.down(block), size=block.shape[-2:], mode="bilinear", align_corners=False)
        features = self.neck(torch.cat([block, up], dim=1))
        self.regression(features)  # read through the `regression` tap
        return self.heatmap(features)
