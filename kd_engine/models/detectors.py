"""The torchvision detectors in ``MODELS`` (``retinanet``, ``fcos``, ``fasterrcnn``), so a
config's ``student``/``teacher`` spec builds them like any other model.

``input_shape`` (C, H, W) gives the image size (min_size = max_size = H, W: never resized) and
the input channels; ``num_classes`` counts the background (the dataset's K + 1). ``options``
passes torchvision constructor keywords through (e.g. ``rpn_batch_size_per_image``,
``score_thresh``, ``detections_per_img``).
"""
from __future__ import annotations

from typing import Any

from kd_engine.models.registry import MODELS
from kd_engine.models.detection import DETECTOR_KINDS, build_detector


def _factory(kind: str):
    def build(input_shape, num_classes: int, width: Any = 8, depth: Any = 1, fpn_channels: int = 64,
              norm: str = "bn", anchor_base: float = 8.0, image_mean: float = 0.5,
              image_std: float = 0.25, anchor_scales: int = 3,
              anchor_ratios: tuple = (0.5, 1.0, 2.0), options: dict | None = None):
        if options is not None and not isinstance(options, dict):
            raise ValueError(f"options must be a mapping of torchvision keywords, got {options!r}")
        c, h, w = input_shape
        return build_detector(kind, (h, w), num_classes, width=width, depth=depth,
                              fpn_channels=fpn_channels, in_channels=c, norm=norm,
                              anchor_base=anchor_base, image_mean=image_mean, image_std=image_std,
                              anchor_scales=anchor_scales, anchor_ratios=anchor_ratios,
                              **(options or {}))

    build.__name__ = build.__qualname__ = kind
    build.__doc__ = f"torchvision {kind} on a small ResNet+FPN, trained from scratch."
    return build


for _kind in DETECTOR_KINDS:
    MODELS.register(_kind)(_factory(_kind))
