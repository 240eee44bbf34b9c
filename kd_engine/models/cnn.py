"""ResNet-style CNN sized for tiny images (8x8 digits up to small folders of photos)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kd_engine.models.registry import MODELS, check_positive_int


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; 1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class GlobalAvgPool(nn.Module):
    """Average-pool and flatten as one module, so the embedding can be tapped by name."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


@MODELS.register("resnet")
class ResNet(nn.Module):
    """stem -> layer1 (s1) -> layer2 (s2) -> layer3 (s2) -> pool -> fc; widths w, 2w, 4w."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int = 16,
                 depth: int = 1):
        super().__init__()
        check_positive_int(width=width, depth=depth)
        in_ch = int(input_shape[0])
        self.stem = nn.Sequential(nn.Conv2d(in_ch, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=False))
        widths, strides = (width, 2 * width, 4 * width), (1, 2, 2)
        cin = width
        for i, (w, s) in enumerate(zip(widths, strides), start=1):
            blocks = [BasicBlock(cin if j == 0 else w, w, s if j == 0 else 1) for j in range(depth)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            cin = w
        self.pool = GlobalAvgPool()
        self.fc = nn.Linear(cin, num_classes)
        self.feature_layers = ["stem", "layer1", "layer2", "layer3", "pool"]
        self.embedding_layer = "pool"
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x))
