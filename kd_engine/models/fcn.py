"""A small fully-convolutional network for dense prediction on tiny images.

stem (s1) -> enc1 (s2) -> enc2 (s2) -> up (x4 back to the input grid, + stem skip) -> dec -> head.
``head`` gives per-pixel class logits (B, K, H, W), the tensor ``forward`` returns. With
``depth_head: true`` a second decoder branch, ``depth_map`` (3x3 conv, BN, ReLU, 1x1 conv, from the
same joined features as ``dec``), predicts one continuous value per pixel; a branch of its own
because sharing ``dec`` with the depth loss held the teacher's digit mIoU at 0.31 after 8 epochs
against 0.47 with the branch (0.78 without depth). The forward pass runs it but returns only the
logits, so every part of the engine that expects one output tensor keeps working, and the dense
task reads the depth map through the ``depth_map`` tap (``kd_engine.models.taps``) exactly like a
feature map. ``edge_head: true`` adds ``edge_map``, a branch of the same form whose one channel
is the logit of "this pixel is on a boundary of the label map" (``dense_outputs["edges"]``), for
segmentation + depth + edges multi-task runs.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kd_engine.models.registry import MODELS, check_positive_int
from kd_engine.models.cnn import BasicBlock


class Upsample(nn.Module):
    """Bilinear resize to a fixed size, as a module so its output can be tapped by name."""

    def __init__(self, size: tuple[int, int]):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)


def _map_branch(in_ch: int, width: int) -> nn.Sequential:
    """A one-channel per-pixel head of its own: 3x3 conv, BN, ReLU, 1x1 conv."""
    return nn.Sequential(nn.Conv2d(in_ch, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                         nn.ReLU(inplace=False), nn.Conv2d(width, 1, 1))


@MODELS.register("fcn")
class FCN(nn.Module):
    """Widths w (stem), 2w (enc1), 4w (enc2), w (dec); ``depth`` blocks per encoder stage."""

    dense = True  # per-pixel outputs: (B, K, H, W)

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int = 8, depth: int = 1,
                 depth_head: bool = False, edge_head: bool = False):
        super().__init__()
        check_positive_int(width=width, depth=depth)
        for key, value in (("depth_head", depth_head), ("edge_head", edge_head)):
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false, got {value!r}")
        in_ch, height, wide = (int(s) for s in input_shape)
        if height % 4 or wide % 4:
            raise ValueError(f"image sides must be multiples of 4 (two stride-2 stages), got {height}x{wide}")
        self.stem = nn.Sequential(nn.Conv2d(in_ch, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=False))
        self.enc1 = nn.Sequential(*[BasicBlock(width if j == 0 else 2 * width, 2 * width, 2 if j == 0 else 1)
                                    for j in range(depth)])
        self.enc2 = nn.Sequential(*[BasicBlock(2 * width if j == 0 else 4 * width, 4 * width, 2 if j == 0 else 1)
                                    for j in range(depth)])
        self.up = Upsample((height, wide))
        self.dec = nn.Sequential(nn.Conv2d(4 * width + width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                 nn.ReLU(inplace=False))
        self.head = nn.Conv2d(width, num_classes, 1)
        self.depth_map = _map_branch(5 * width, width) if depth_head else None
        self.edge_map = _map_branch(5 * width, width) if edge_head else None
        self.dense_outputs = {**({"depth": "depth_map"} if depth_head else {}),
                              **({"edges": "edge_map"} if edge_head else {})}
        self.feature_layers = ["stem", "enc1", "enc2", "dec", "head"] + list(self.dense_outputs.values())
        self.embedding_layer = "dec"
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.stem(x)
        deep = self.up(self.enc2(self.enc1(skip)))
        joined = torch.cat([deep, skip], dim=1)
        for branch in (self.depth_map, self.edge_map):
            if branch is not None:
                branch(joined)  # read through the `depth_map` / `edge_map` tap
        features = self.dec(joined)
        return self.head(features)
