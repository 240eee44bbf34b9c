"""A small RoI network for box refinement: a stride-4 CNN, 7×7 RoI crops, two FC layers and one
linear head per loss (class, instance score, box deltas, IoU confidence).

``forward(images)`` returns the stride-4 feature map (so taps and parameter counts work like any
model's); a method crops it with `roi_features` and reads the heads. RoI crops use
``torchvision.ops.roi_align`` (bilinear, aligned) at ``spatial_scale = 1/4``, by default with one
sample per bin (``sampling_ratio: 1``, a bilinear crop at the bin centres): torchvision's CPU
backward of roi_align costs ~2.4x as much with 2×2 samples, and a bin of a 6-16 px object on a
stride-4 map spans less than one feature cell anyway. The IoU head reads a
proposal's feature beside the mean feature of its bag ([f_p, mean_bag f]), so it can judge one
proposal against the others.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchvision.ops import roi_align

from kd_engine.models.registry import MODELS, check_positive_int

STRIDE = 4


@MODELS.register("roi_net")
class RoINet(nn.Module):
    feature_layers = ("backbone",)
    embedding_layer = "trunk"

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int = 16, hidden: int = 128,
                 crop: int = 7, sampling_ratio: int = 1):
        super().__init__()
        check_positive_int(width=width, hidden=hidden, crop=crop, sampling_ratio=sampling_ratio)
        w, self.crop, self.sampling_ratio = width, crop, sampling_ratio
        self.backbone = nn.Sequential(
            nn.Conv2d(int(input_shape[0]), w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU())
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * crop * crop, hidden), nn.ReLU(),
                                   nn.Linear(hidden, hidden), nn.ReLU())
        self.cls_head = nn.Linear(hidden, num_classes + 1)  # last logit: background
        self.ins_head = nn.Linear(hidden, 1)
        self.reg_head = nn.Linear(hidden, 4)
        self.iou_head = nn.Linear(2 * hidden, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def roi_features(self, feats: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """(R, hidden) features of ``rois`` (R, 5): (image index, x0, y0, x1, y1) in pixels."""
        crops = roi_align(feats, rois.to(feats.dtype), (self.crop, self.crop), spatial_scale=1.0 / STRIDE,
                          sampling_ratio=self.sampling_ratio, aligned=True)
        return self.trunk(crops)

    def bag_features(self, feats: torch.Tensor, bags: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """(M, P, hidden) features of bags (M, P, 4) whose objects lie in images ``owner`` (M,)."""
        m, p = bags.shape[:2]
        index = owner.to(bags.dtype)[:, None, None].expand(m, p, 1)
        return self.roi_features(feats, torch.cat([index, bags], -1).reshape(-1, 5)).reshape(m, p, -1)

    def iou_confidence(self, bag_feats: torch.Tensor) -> torch.Tensor:
        """(M, P) IoU-confidence outputs from [f_p, mean over the bag of f]."""
        context = bag_feats.mean(1, keepdim=True).expand_as(bag_feats)
        return self.iou_head(torch.cat([bag_feats, context], -1))[..., 0]
