"""The plain and mobile networks of the CIFAR knowledge-distillation literature, written from
their architecture descriptions:

- VGG (Simonyan and Zisserman, 2015) with BatchNorm, five conv stages separated by 2×2 max-pools
  and one linear classifier on the pooled 512-d vector, as used for 32-px inputs: vgg8 has one
  conv per stage, vgg11 1-1-2-2-2, vgg13 two per stage.
- MobileNetV2 (Sandler et al., 2018) at width 0.5 with the CIFAR strides of the KD benchmarks
  (stride-2 stem, stride 1 in the 24-channel stage, so a 32-px input ends at 2×2).
- ShuffleNetV1 (Zhang et al., 2018; g = 3, stages 240/480/960 of 4/8/4 units) and ShuffleNetV2
  (Ma et al., 2018; 1× width, 116/232/464 channels, 1024-d last conv), with stride-1 stems.

Each registered name is one fixed architecture taking ``input_shape`` and ``num_classes``; the
taps are ``stem``, the stages, and ``pool`` (the embedding).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kd_engine.models.cifar_resnet import StagedNet, register_variant


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True,
            bias: bool = False) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=bias), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class VGG(StagedNet):
    """Five stages of 3×3 conv-BN-ReLU (``plan`` gives each stage's widths), max-pool between them."""

    stages = ("layer1", "layer2", "layer3", "layer4", "layer5")

    def __init__(self, input_shape: Sequence[int], num_classes: int, plan: tuple[tuple[int, ...], ...]):
        super().__init__()
        cin = int(input_shape[0])
        self.stem = nn.Identity()  # VGG has no stem apart from its first stage; kept for uniform taps
        for index, (name, widths) in enumerate(zip(self.stages, plan)):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if index else []
            for width in widths:
                layers.append(conv_bn(cin, width, 3, bias=True))
                cin = width
            setattr(self, name, nn.Sequential(*layers))
        self._finish(cin, num_classes)
        self.feature_layers = [*self.stages, "pool"]


register_variant("vgg8", VGG, plan=((64,), (128,), (256,), (512,), (512,)))
register_variant("vgg11", VGG, plan=((64,), (128,), (256, 256), (512, 512), (512, 512)))
register_variant("vgg13", VGG, plan=((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)))


class InvertedResidual(nn.Module):
    """1×1 expand ×t, 3×3 depthwise (carrying the stride), 1×1 linear project; residual when the
    shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.body = nn.Sequential(conv_bn(cin, mid, 1), conv_bn(mid, mid, 3, stride, groups=mid),
                                  conv_bn(mid, cout, 1, relu=False))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(StagedNet):
    """Seven inverted-residual stages (expansion t, channels c, repeats n, stride s), width-scaled."""

    stages = tuple(f"layer{i}" for i in range(1, 8))
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: float):
        super().__init__()
        cin = int(32 * width)
        self.stem = conv_bn(int(input_shape[0]), cin, 3, 2)
        for name, (t, c, n, s) in zip(self.stages, self.SETTINGS):
            cout = int(c * width)
            setattr(self, name, nn.Sequential(*[InvertedResidual(cin if j == 0 else cout, cout, s if j == 0 else 1, t)
                                                for j in range(n)]))
            cin = cout
        self.last = conv_bn(cin, 1280, 1)
        self._finish(1280, num_classes)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(x)


register_variant("mobilenetv2_cifar", MobileNetV2, width=0.5)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups, so grouped convs see every group next."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV1Unit(nn.Module):
    """Grouped 1×1 reduce to a quarter, shuffle, 3×3 depthwise, grouped 1×1 expand; a stride-2
    unit concatenates a 3×3 average-pooled input instead of adding it."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        branch = cout - cin if stride == 2 else cout
        mid = branch // 4
        first_groups = 1 if cin == 24 else groups  # the first unit's input (24 ch) is not grouped
        self.groups = first_groups
        self.reduce = conv_bn(cin, mid, 1, groups=first_groups)
        self.depthwise = conv_bn(mid, mid, 3, stride, groups=mid, relu=False)
        self.expand = conv_bn(mid, branch, 1, groups=groups, relu=False)
        self.pool = nn.AvgPool2d(3, 2, 1) if stride == 2 else None
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(self.depthwise(channel_shuffle(self.reduce(x), self.groups)))
        if self.pool is not None:
            return self.relu(torch.cat([out, self.pool(x)], 1))
        return self.relu(out + x)


class ShuffleNetV1(StagedNet):
    def __init__(self, input_shape: Sequence[int], num_classes: int, widths: tuple[int, int, int],
                 units: tuple[int, int, int], groups: int):
        super().__init__()
        self.stem = conv_bn(int(input_shape[0]), 24, 1)
        cin = 24
        for name, width, count in zip(self.stages, widths, units):
            setattr(self, name, nn.Sequential(*[ShuffleV1Unit(cin if j == 0 else width, width, 2 if j == 0 else 1, groups)
                                                for j in range(count)]))
            cin = width
        self._finish(cin, num_classes)


register_variant("shufflenetv1", ShuffleNetV1, widths=(240, 480, 960), units=(4, 8, 4), groups=3)


class ShuffleV2Unit(nn.Module):
    """Keep half the channels, transform the other half (1×1, 3×3 depthwise, 1×1), concatenate
    and shuffle; a stride-2 unit transforms both halves of the full input and doubles the width."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        mid = cout // 2
        branch_in = cin if stride == 2 else cin // 2
        self.right = nn.Sequential(conv_bn(branch_in, mid, 1), conv_bn(mid, mid, 3, stride, groups=mid, relu=False),
                                   conv_bn(mid, mid, 1))
        self.left = (nn.Sequential(conv_bn(cin, cin, 3, 2, groups=cin, relu=False), conv_bn(cin, mid, 1))
                     if stride == 2 else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.left is None:
            keep, change = x.chunk(2, dim=1)
            out = torch.cat([keep, self.right(change)], 1)
        else:
            out = torch.cat([self.left(x), self.right(x)], 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(StagedNet):
    def __init__(self, input_shape: Sequence[int], num_classes: int, widths: tuple[int, int, int],
                 units: tuple[int, int, int], last: int):
        super().__init__()
        self.stem = conv_bn(int(input_shape[0]), 24, 3)
        cin = 24
        for name, width, count in zip(self.stages, widths, units):
            setattr(self, name, nn.Sequential(*[ShuffleV2Unit(cin if j == 0 else width, width, 2 if j == 0 else 1)
                                                for j in range(count)]))
            cin = width
        self.last = conv_bn(cin, last, 1)
        self._finish(last, num_classes)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(x)


register_variant("shufflenetv2", ShuffleNetV2, widths=(116, 232, 464), units=(4, 8, 4), last=1024)
