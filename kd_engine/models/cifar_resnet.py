"""The residual networks of the CIFAR knowledge-distillation literature, written from their
architecture descriptions: the CIFAR ResNets of He et al. (2016, §4.2: a 3×3 stem, three stages of
n basic blocks at 16/32/64 channels, depth 6n+2) with the 4×-wide "x4" variants, Zagoruyko and
Komodakis's wide ResNets (2016: pre-activation blocks, WRN-d-k has (d-4)/6 blocks per stage at
16k/32k/64k channels), and the bottleneck ResNet-50 adapted to 32-px inputs (3×3 stride-1 stem,
no max-pool).

Each registered name is one fixed architecture (``resnet32x4``, ``wrn_40_2``, ...) taking only
``input_shape`` and ``num_classes``, so a config names a network exactly as papers do. Every model
exposes ``feature_layers`` (stem, each stage, the pooled embedding) for feature taps.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kd_engine.models.registry import MODELS
from kd_engine.models.cnn import BasicBlock, GlobalAvgPool


def register_variant(name: str, cls: type, **fixed) -> None:
    """Register ``name`` as ``cls`` with ``fixed`` hyper-parameters: the config gives none of them."""

    def build(input_shape: Sequence[int], num_classes: int) -> nn.Module:
        return cls(input_shape, num_classes, **fixed)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{cls.__name__}({', '.join(f'{k}={v}' for k, v in fixed.items())})"
    MODELS.register(name)(build)


def kaiming_init(model: nn.Module) -> None:
    """He-normal convolutions, unit BatchNorm, zero biases: the initialisation these papers use."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class StagedNet(nn.Module):
    """stem -> layer1 -> layer2 -> layer3 [-> layer4] -> pool -> fc, with the taps named alike."""

    stages: tuple[str, ...] = ("layer1", "layer2", "layer3")

    def _finish(self, channels: int, num_classes: int) -> None:
        self.pool = GlobalAvgPool()
        self.fc = nn.Linear(channels, num_classes)
        self.feature_layers = ["stem", *self.stages, "pool"]
        self.embedding_layer = "pool"
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in self.stages:
            x = getattr(self, name)(x)
        return self.fc(self.pool(self.head(x)))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return x


class CifarResNet(StagedNet):
    """He et al.'s CIFAR ResNet: depth 6n+2, stage widths ``widths`` (16, 32, 64; ×4 for "x4")."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, depth: int,
                 stem: int, widths: tuple[int, int, int]):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(int(input_shape[0]), stem, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(stem), nn.ReLU())
        cin = stem
        for name, width, stride in zip(self.stages, widths, (1, 2, 2)):
            setattr(self, name, nn.Sequential(*[BasicBlock(cin if j == 0 else width, width, stride if j == 0 else 1)
                                                for j in range(n)]))
            cin = width
        self._finish(cin, num_classes)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    register_variant(f"resnet{_depth}", CifarResNet, depth=_depth, stem=16, widths=(16, 32, 64))
for _depth in (8, 32):
    register_variant(f"resnet{_depth}x4", CifarResNet, depth=_depth, stem=32, widths=(64, 128, 256))


class PreActBlock(nn.Module):
    """Wide-ResNet block: BN-ReLU-conv3×3, BN-ReLU-conv3×3, plus the input (a 1×1 conv of the
    pre-activated input when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                         if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv2(self.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(StagedNet):
    """WRN-depth-k: a 16-channel 3×3 stem, three stages of (depth-4)/6 pre-activation blocks at
    16k, 32k, 64k channels, then BN-ReLU before pooling."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, depth: int, k: int):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        self.stem = nn.Conv2d(int(input_shape[0]), 16, 3, 1, 1, bias=False)
        cin = 16
        for name, width, stride in zip(self.stages, (16 * k, 32 * k, 64 * k), (1, 2, 2)):
            setattr(self, name, nn.Sequential(*[PreActBlock(cin if j == 0 else width, width, stride if j == 0 else 1)
                                                for j in range(n)]))
            cin = width
        self.bn, self.relu = nn.BatchNorm2d(cin), nn.ReLU()
        self._finish(cin, num_classes)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(x))


for _depth, _k in ((16, 1), (16, 2), (40, 1), (40, 2), (28, 4)):
    register_variant(f"wrn_{_depth}_{_k}", WideResNet, depth=_depth, k=_k)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (carrying the stride), 1×1 expand ×4, with a projected shortcut on change."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        cout = planes * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(),
            nn.Conv2d(planes, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class BottleneckResNet(StagedNet):
    """ResNet-50 for 32-px inputs: a 3×3 stride-1 stem and no max-pool, then four bottleneck
    stages (3, 4, 6, 3 blocks; 64-512 planes; strides 1, 2, 2, 2)."""

    stages = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, input_shape: Sequence[int], num_classes: int, blocks: tuple[int, ...]):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(int(input_shape[0]), 64, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(64), nn.ReLU())
        cin = 64
        for name, count, planes, stride in zip(self.stages, blocks, (64, 128, 256, 512), (1, 2, 2, 2)):
            layers = []
            for j in range(count):
                layers.append(Bottleneck(cin, planes, stride if j == 0 else 1))
                cin = planes * Bottleneck.expansion
            setattr(self, name, nn.Sequential(*layers))
        self._finish(cin, num_classes)


register_variant("resnet50_cifar", BottleneckResNet, blocks=(3, 4, 6, 3))
