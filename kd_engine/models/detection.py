"""Small torchvision detectors (RetinaNet, FCOS, Faster R-CNN) for scene-sized images.

torchvision's stock builders assume ImageNet-pretrained ResNet-50 and 800-px inputs; the
workbench trains everything from scratch on ~128-px scenes, so the backbone here is a tiny
ResNet (stride-2 stem, four stages each opening with a stride-2 BasicBlock) under a torchvision
FPN, images are never resized (min_size = max_size = image size) and anchors start at 8 px.
Nothing is pretrained. ``build_detector`` is the entry point; models are not registered in
``MODELS`` (detection configs are wired separately).

FPN levels are named ``p3..p7`` (RetinaNet, FCOS) or ``p2..p5, pool`` (Faster R-CNN); these are
the keys of the feature dict the backbone returns and the levels distillation works on.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.resnet import BasicBlock
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

DETECTOR_KINDS = ("retinanet", "fcos", "fasterrcnn")
# The AID miniature: teacher 32/64/128/256 x2 blocks, student 8/16/32/64 x1 block, FPN 64 for both.
TEACHER_SIZE = {"width": 32, "depth": 2, "fpn_channels": 64}
STUDENT_SIZE = {"width": 8, "depth": 1, "fpn_channels": 64}
_NORMS = {"bn": nn.BatchNorm2d, "frozen": FrozenBatchNorm2d}


def _per_stage(value: int | Sequence[int], name: str, scale: bool) -> list[int]:
    """An int means the first stage (doubling per stage when ``scale``); a list gives all four."""
    if isinstance(value, int) and not isinstance(value, bool):
        vals = [value * (2 ** i if scale else 1) for i in range(4)]
    else:
        vals = [int(v) for v in value]
    if len(vals) != 4 or any(v < 1 for v in vals):
        raise ValueError(f"{name} must be a positive int or 4 positive ints, got {value!r}")
    return vals


class SmallResNet(nn.Module):
    """Tiny ResNet body; children run in order so torchvision's IntermediateLayerGetter can tap it.

    Strides: stem 2, layer1 4, layer2 8, layer3 16, layer4 32.
    """

    def __init__(self, widths: Sequence[int], depths: Sequence[int], in_channels: int = 3,
                 norm: str = "bn") -> None:
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {sorted(_NORMS)}, got {norm!r}")
        norm_layer = _NORMS[norm]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1, bias=False),
            norm_layer(widths[0]), nn.ReLU(inplace=True))
        cin = widths[0]
        for i, (w, d) in enumerate(zip(widths, depths)):
            down = nn.Sequential(nn.Conv2d(cin, w, 1, stride=2, bias=False), norm_layer(w))
            blocks = [BasicBlock(cin, w, stride=2, downsample=down, norm_layer=norm_layer)]
            blocks += [BasicBlock(w, w, norm_layer=norm_layer) for _ in range(d - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = w
        self.widths = list(widths)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return x


def build_backbone(kind: str, width: int | Sequence[int] = 8, depth: int | Sequence[int] = 1,
                   fpn_channels: int = 64, in_channels: int = 3,
                   norm: str = "bn") -> BackboneWithFPN:
    """SmallResNet + FPN: P3-P5 plus P6/P7 convs for single-stage, P2-P5 plus a pool level for
    Faster R-CNN (as torchvision's own recipes do)."""
    widths, depths = _per_stage(width, "width", True), _per_stage(depth, "depth", False)
    body = SmallResNet(widths, depths, in_channels=in_channels, norm=norm)
    if kind == "fasterrcnn":
        stages, extra = [1, 2, 3, 4], LastLevelMaxPool()
    else:
        stages, extra = [2, 3, 4], LastLevelP6P7(fpn_channels, fpn_channels)
    return_layers = {f"layer{s}": f"p{s + 1}" for s in stages}
    return BackboneWithFPN(body, return_layers, [widths[s - 1] for s in stages],
                           fpn_channels, extra_blocks=extra)


def detector_levels(kind: str) -> list[str]:
    """Names of the FPN levels (feature-dict keys) of a detector kind, finest first."""
    _check_kind(kind)
    if kind == "fasterrcnn":
        return ["p2", "p3", "p4", "p5", "pool"]
    return ["p3", "p4", "p5", "p6", "p7"]


def _check_kind(kind: str) -> None:
    if kind not in DETECTOR_KINDS:
        raise ValueError(f"detector kind must be one of {', '.join(DETECTOR_KINDS)}, got {kind!r}")


def build_detector(kind: str, image_size: int | Sequence[int], num_classes: int,
                   width: int | Sequence[int] = 8, depth: int | Sequence[int] = 1,
                   fpn_channels: int = 64, in_channels: int = 3, norm: str = "bn",
                   anchor_base: float = 8.0, image_mean: float = 0.5, image_std: float = 0.25,
                   anchor_scales: int = 3, anchor_ratios: Sequence[float] = (0.5, 1.0, 2.0),
                   **overrides) -> nn.Module:
    """A from-scratch torchvision detector for images of ``image_size`` (int or (H, W)).

    ``num_classes`` includes background (index 0), as torchvision expects. ``width``/``depth``
    are per-stage (an int width doubles per stage). Anchors: ``anchor_base * 2**l`` at level l
    (8..128 by default); RetinaNet adds ``anchor_scales`` octave scales (2**(k/3), the usual 3)
    x ``anchor_ratios`` (the usual 0.5, 1, 2), Faster R-CNN's RPN uses one size x those ratios,
    FCOS one square anchor. Fewer RetinaNet anchors (1 scale) shrink the head's outputs and the
    per-anchor loss work, which matters on a CPU. Extra keyword ``overrides`` go to the
    torchvision constructor (e.g. ``rpn_batch_size_per_image``).
    """
    _check_kind(kind)
    if isinstance(image_size, int):
        hw = (image_size, image_size)
    else:
        hw = tuple(int(v) for v in image_size)
    if len(hw) != 2 or min(hw) < 32:
        raise ValueError(f"image_size must be an int or (H, W) of at least 32 px, "
                         f"got {image_size!r}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must count background too (>= 2), got {num_classes!r}")
    backbone = build_backbone(kind, width, depth, fpn_channels, in_channels, norm)
    if not 1 <= int(anchor_scales) <= 3:
        raise ValueError(f"anchor_scales must be 1, 2 or 3, got {anchor_scales!r}")
    ratios = tuple(float(r) for r in anchor_ratios)
    if not ratios or min(ratios) <= 0:
        raise ValueError(f"anchor_ratios must be positive numbers, got {anchor_ratios!r}")
    sizes = [anchor_base * 2 ** i for i in range(5)]
    common = dict(min_size=min(hw), max_size=max(hw), image_mean=[image_mean] * in_channels,
                  image_std=[image_std] * in_channels)
    if kind == "retinanet":
        scales = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))[: int(anchor_scales)]
        anchors = AnchorGenerator(tuple(tuple(s * k for k in scales) for s in sizes), (ratios,) * 5)
        model = RetinaNet(backbone, num_classes, anchor_generator=anchors,
                          **{**common, **overrides})
    elif kind == "fcos":
        anchors = AnchorGenerator(tuple((s,) for s in sizes), ((1.0,),) * 5)
        model = FCOS(backbone, num_classes, anchor_generator=anchors, **{**common, **overrides})
    else:
        anchors = AnchorGenerator(tuple((s,) for s in sizes), (ratios,) * 5)
        roi_levels = ["p2", "p3", "p4", "p5"]
        # canonical_scale 56: a 56-px box pools from P4, 14-px boxes from P2 (224 assumes 800-px).
        pool = MultiScaleRoIAlign(roi_levels, output_size=7, sampling_ratio=2, canonical_scale=56)
        head = TwoMLPHead(fpn_channels * 49, 256)
        defaults = dict(rpn_batch_size_per_image=128, box_batch_size_per_image=64,
                        rpn_pre_nms_top_n_train=300, rpn_pre_nms_top_n_test=300,
                        rpn_post_nms_top_n_train=150, rpn_post_nms_top_n_test=150)
        model = FasterRCNN(backbone, None, rpn_anchor_generator=anchors, box_roi_pool=pool,
                           box_head=head, box_predictor=FastRCNNPredictor(256, num_classes),
                           **{**common, **defaults, **overrides})
    model.kd_kind = kind
    model.kd_levels = detector_levels(kind)
    return model


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Put every BatchNorm in eval mode (running stats, no updates) without touching the rest.

    torchvision reports losses only in train mode; calling this after ``model.train()`` keeps
    features identical to eval mode, which the loss-decomposition test relies on.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


__all__ = ["DETECTOR_KINDS", "STUDENT_SIZE", "TEACHER_SIZE", "SmallResNet", "build_backbone",
           "build_detector", "detector_levels", "freeze_batchnorm"]
