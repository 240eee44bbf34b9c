"""A detection teacher's pass (``TeacherLosses``), its per-image slices, and batches rebuilt
from them.

A teacher pass (``TeacherLosses``) is per image throughout: losses per image / level / GT, FPN
maps per image, parts per image. So a batch's pass can be cut into one pass per image and put
back together in any order. Two things rely on that:

* the offline teacher cache (``kd_engine.methods.detection_cache``) stores each training image's
  slice once and rebuilds later batches from the stored slices;
* cross-fitted teachers (``kd_engine.models.cross_fit``): a batch is split by fold, each fold's
  images go through the teacher that never saw them, and the pieces are put back in batch order.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor


@dataclass
class GTLosses:
    """Losses of one image's ground-truth boxes (boxes in the model's input coordinates)."""

    boxes: Tensor  # (G, 4) xyxy
    labels: Tensor  # (G,)
    cls: Tensor  # (G,)
    box: Tensor  # (G,)
    num_anchors: Tensor  # (G,) foreground anchors (RPN anchors for Faster R-CNN) matched to it

    @property
    def no_anchor(self) -> Tensor:
        return self.num_anchors == 0


@dataclass
class TeacherLosses:
    """Structured teacher loss; ``cls``/``box`` are (B,), ``*_level`` are (B, L) over ``levels``."""

    cls: Tensor
    box: Tensor
    cls_level: Tensor
    box_level: Tensor
    num_foreground: Tensor  # (B,) foreground anchors (RPN foreground for Faster R-CNN)
    per_gt: list[GTLosses]
    features: "OrderedDict[str, Tensor]"
    levels: list[str]
    parts: dict[str, Tensor] = field(default_factory=dict)  # model-specific components

    @property
    def total(self) -> Tensor:
        return self.cls + self.box

    @property
    def total_level(self) -> Tensor:
        return self.cls_level + self.box_level

    @property
    def num_gt_without_anchors(self) -> int:
        return int(sum(int(g.no_anchor.sum()) for g in self.per_gt))


def slice_pass(tl: TeacherLosses, b: int, keep_graph: bool = False) -> TeacherLosses:
    """Image b of a batch's teacher pass. Cloned and detached by default, so a cached slice does
    not keep the batch alive; ``keep_graph`` keeps the autograd link instead (a pass taken with
    gradients, whose slices are stacked back into the same step's batch)."""
    if keep_graph:
        one = lambda t: t[b:b + 1]  # noqa: E731
        gt = tl.per_gt[b]
    else:
        one = lambda t: t[b:b + 1].detach().clone()  # noqa: E731
        g = tl.per_gt[b]
        gt = GTLosses(*(t.detach().clone() for t in (g.boxes, g.labels, g.cls, g.box, g.num_anchors)))
    return TeacherLosses(one(tl.cls), one(tl.box), one(tl.cls_level), one(tl.box_level),
                         one(tl.num_foreground), [gt],
                         OrderedDict((k, one(v)) for k, v in tl.features.items()), list(tl.levels),
                         {k: one(v) for k, v in tl.parts.items()})


def stack_passes(parts: list[TeacherLosses]) -> TeacherLosses:
    """One batch's teacher pass from per-image ones (the inverse of slicing)."""
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    first = parts[0]
    return TeacherLosses(cat("cls"), cat("box"), cat("cls_level"), cat("box_level"),
                         cat("num_foreground"), [p.per_gt[0] for p in parts],
                         OrderedDict((k, torch.cat([p.features[k] for p in parts])) for k in first.features),
                         list(first.levels), {k: torch.cat([p.parts[k] for p in parts]) for k in first.parts})


def routed_pass(folds, fold_of: torch.Tensor, one_pass: Callable, images, targets, features=None) -> TeacherLosses:
    """The batch's pass with image b scored by ``folds[fold_of[b]]``.

    ``one_pass(model, images, targets, features)`` is the single-teacher pass; ``features``
    (student maps graded by the teacher's heads, or None) are split the same way.
    """
    slices: list[TeacherLosses | None] = [None] * len(images)
    for k, model in enumerate(folds):
        idx = [b for b in range(len(images)) if int(fold_of[b]) == k]
        if not idx:
            continue
        sub = None if features is None else {lv: v[idx] for lv, v in features.items()}
        tl = one_pass(model, [images[b] for b in idx], [targets[b] for b in idx], sub)
        for j, b in enumerate(idx):
            slices[b] = slice_pass(tl, j, keep_graph=tl.cls.requires_grad)
    return stack_passes(slices)


__all__ = ["GTLosses", "TeacherLosses", "routed_pass", "slice_pass", "stack_passes"]
