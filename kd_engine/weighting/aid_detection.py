"""AID weights for detection distillation (AID).

w = sg(exp(−α·L^T)) from the frozen teacher's own detection loss, at one of four granularities:

- ``per_image_level`` (default): one w per (image, FPN level); L_{b,l} is the image's level share,
  normalised by the image's positives, so the levels add up to the image loss.
- ``per_level_batch``: the official code; one w per level from the batch-reduced level loss. For
  Faster R-CNN w_l = exp(−α(L_RoI,cls + L_RoI,box + L_RPN,cls,l + L_RPN,box,l)), RoI part a scalar.
- ``per_image``: one w per image for every level.
- ``per_gt`` (extension): one w per GT box, painted onto a spatial mask for L_AM; the global
  terms use the per-image w. A GT that got no anchor has no loss, so it gets w = 1.

``decoupled`` splits the weight: classification-side terms use L^T_cls, box-side terms L^T_box,
feature imitation L^T_cls + L^T_box. Weights are never normalised (in AID their mean < 1 is
part of the method, and the constant-mean control exists to measure it).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from kd_engine.errors import ConfigError
from kd_engine.weighting.base import DetectionWeights, aid_weights

AIDWeights = DetectionWeights  # the name this container had before it served every strategy

GRANULARITIES = ("per_image_level", "per_level_batch", "per_image", "per_gt")


def _check(granularity: str, alpha: float) -> None:
    if granularity == "decoupled":
        raise ConfigError("weighting.params.granularity: 'decoupled' is not a granularity; set "
                          "weighting.params.decoupled: true together with one of "
                          + ", ".join(GRANULARITIES))
    if granularity not in GRANULARITIES:
        raise ConfigError(f"weighting.params.granularity: must be one of "
                          f"{', '.join(GRANULARITIES)}, got {granularity!r}")
    if not alpha >= 0:
        raise ConfigError(f"weighting.params.alpha: must be >= 0, got {alpha}")


def _batch_reduce(per_image: Tensor, counts: Tensor) -> Tensor:
    """Undo each image's normalisation, then use the batch's: Σ_b L_b·max(1, n_b) / max(1, Σ n_b),
    the official code's avg_factor (the batch's positives, or its sampled RPN anchors)."""
    n = counts.to(per_image.dtype).reshape(-1, *([1] * (per_image.dim() - 1)))
    return (per_image * n.clamp_min(1)).sum(0) / n.sum().clamp_min(1)


def _level_batch_losses(tl) -> tuple[Tensor, Tensor]:
    """Batch-reduced (L,) cls and box level losses; two-stage models use ``parts``."""
    p = tl.parts
    if all(k in p for k in ("roi_cls", "roi_box", "rpn_cls_level", "rpn_box_level")):
        ngt = torch.tensor([g.boxes.shape[0] for g in tl.per_gt], device=p["roi_cls"].device)
        sampled = p.get("rpn_sampled", tl.num_foreground)
        roi_cls, roi_box = _batch_reduce(p["roi_cls"], ngt), _batch_reduce(p["roi_box"], ngt)
        return (roi_cls + _batch_reduce(p["rpn_cls_level"], sampled),
                roi_box + _batch_reduce(p["rpn_box_level"], sampled))
    return (_batch_reduce(tl.cls_level, tl.num_foreground),
            _batch_reduce(tl.box_level, tl.num_foreground))


def per_gt_weights(per_gt, alpha: float) -> list[Tensor]:
    """exp(−α(cls_j + box_j)) per GT; 1 where the GT matched no anchor (it has no loss at all)."""
    out = []
    for g in per_gt:
        w = aid_weights(g.cls + g.box, alpha)
        out.append(torch.where(g.no_anchor.to(w.device), torch.ones_like(w), w))
    return out


def aid_detection_weights(teacher_losses, alpha: float = 0.1, granularity: str = "per_image_level",
                          decoupled: bool = False) -> DetectionWeights:
    """AID weights from a ``TeacherLosses`` (see the module doc for the granularities)."""
    _check(granularity, alpha)
    tl = teacher_losses
    if granularity == "per_image_level":
        cls, box = tl.cls_level, tl.box_level
    elif granularity == "per_level_batch":
        cls, box = _level_batch_losses(tl)
    else:
        cls, box = tl.cls, tl.box
    feature = aid_weights(cls + box, alpha)
    w_cls, w_box = (aid_weights(cls, alpha), aid_weights(box, alpha)) if decoupled else (
        feature, feature)
    out = DetectionWeights(feature, w_cls, w_box, granularity, float(alpha), bool(decoupled))
    if granularity == "per_gt":
        out.per_gt = per_gt_weights(tl.per_gt, alpha)
        out.num_gt_without_anchors = tl.num_gt_without_anchors
    return out


def controlled(weights: DetectionWeights, mode: str | None,
               generator: torch.Generator | None = None) -> DetectionWeights:
    """The controls of the AID comparison. "shuffle" permutes the weights within the batch (over images and
    levels together; GT weights over all the batch's GTs); "mean" gives every entry the batch
    mean. cls/box/feature weights share one permutation, so decoupled triples stay together."""
    if mode is None:
        return weights

    def apply(t: Tensor, perm: Tensor | None) -> Tensor:
        flat = t.reshape(-1)
        if not flat.numel():
            return t.clone()
        out = flat[perm.to(flat.device)] if perm is not None else flat.mean().expand_as(flat)
        return out.reshape(t.shape).clone()

    def perm_of(n: int) -> Tensor | None:
        return torch.randperm(n, generator=generator) if mode == "shuffle" else None

    if mode not in ("shuffle", "mean"):
        raise ValueError(f"unknown control {mode!r} (shuffle, mean)")
    p = perm_of(weights.feature.numel())
    out = replace(weights, feature=apply(weights.feature, p), cls=apply(weights.cls, p),
                  box=apply(weights.box, p))
    if weights.per_gt is not None:
        sizes = [g.numel() for g in weights.per_gt]
        flat = torch.cat([g.reshape(-1) for g in weights.per_gt]) if sizes else torch.zeros(0)
        out.per_gt = list(apply(flat, perm_of(flat.numel())).split(sizes))
    return out


def fpn_strides(levels: Sequence[str]) -> dict[str, int]:
    """Strides of the bench's FPN level names: p<k> -> 2**k; ``pool`` is twice the level before."""
    out: dict[str, int] = {}
    for lv in levels:
        if lv.startswith("p") and lv[1:].isdigit():
            out[lv] = 2 ** int(lv[1:])
        elif lv == "pool" and out:
            out[lv] = 2 * list(out.values())[-1]
        else:
            raise ValueError(f"no stride known for FPN level {lv!r}")
    return out


def _cells(lo: float, hi: float, s: int, n: int) -> tuple[int, int]:
    """Cells [⌊lo/s⌋, ⌈hi/s⌉) clipped to the map, at least one (a box on the edge keeps one)."""
    a = min(max(int(math.floor(lo / s)), 0), n - 1)
    return a, min(max(int(math.ceil(hi / s)), a + 1), n)


def paint_per_gt_mask(per_gt, levels_shapes: Mapping[str, tuple[int, int]],
                      strides: Mapping[str, int], image_weights: Tensor | None = None,
                      background: str = "one", alpha: float = 0.1,
                      gt_weights: Sequence[Tensor] | None = None) -> dict[str, Tensor]:
    """Per-level (B, H, W) masks with each GT's w over its cells, the minimum where GTs overlap,
    and ``background`` ("one", or "image": the image's w) elsewhere. The mask multiplies L_AM's
    spatial attention mask. GT weights come from ``gt_weights`` or exp(−α L_j) (no anchor -> 1)."""
    if background not in ("one", "image"):
        raise ConfigError(f"weighting.params.background: must be 'one' or 'image', "
                          f"got {background!r}")
    if background == "image" and image_weights is None:
        raise ValueError("background='image' needs image_weights (B,)")
    ws = list(gt_weights) if gt_weights is not None else per_gt_weights(per_gt, alpha)
    B = len(per_gt)
    masks = {}
    for lv, (H, W) in levels_shapes.items():
        s = int(strides[lv])
        boxes_min = torch.full((B, H, W), math.inf)
        for b, (g, w) in enumerate(zip(per_gt, ws)):
            for (x0, y0, x1, y1), wj in zip(g.boxes.detach().cpu().tolist(), w.detach().cpu()):
                xa, xb = _cells(x0, x1, s, W)
                ya, yb = _cells(y0, y1, s, H)
                region = boxes_min[b, ya:yb, xa:xb]
                boxes_min[b, ya:yb, xa:xb] = torch.minimum(region, wj.float())
        if background == "one":
            bg = torch.ones(B, 1, 1)
        else:
            bg = image_weights.detach().float().cpu().reshape(B, 1, 1)
        mask = torch.where(torch.isinf(boxes_min), bg.expand(B, H, W), boxes_min)
        device = image_weights.device if image_weights is not None else (
            per_gt[0].boxes.device if per_gt else "cpu")
        masks[lv] = mask.to(device)
    return masks


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def aid_weight_records(weights: DetectionWeights, teacher_losses,
                       image_ids: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Per-instance record columns for the run store (the AID record).

    per_image_level / per_level_batch: one row per (image, level) with that image's level losses
    (the weight is the one used, batch-wide for per_level_batch). per_image: one row per image,
    level -1 ("all"). per_gt: the per-image rows plus one row per GT (gt index, xyxy box, label,
    matched anchors); gt is -1 and the box NaN on image rows. Decoupled adds weight_cls/weight_box.
    """
    tl = teacher_losses
    B, L = tl.cls_level.shape
    ids = np.arange(B) if image_ids is None else np.asarray(list(image_ids))
    if weights.granularity in ("per_image_level", "per_level_batch"):
        cols = {"image_id": np.repeat(ids, L), "level": np.tile(np.arange(L), B),
                "teacher_cls": _np(tl.cls_level).reshape(-1),
                "teacher_box": _np(tl.box_level).reshape(-1)}
        w = {k: _np(weights.as_image_level(B, L, k)).reshape(-1) for k in ("feature", "cls", "box")}
    else:
        cols = {"image_id": ids, "level": np.full(B, -1), "teacher_cls": _np(tl.cls),
                "teacher_box": _np(tl.box)}
        w = {k: _np(getattr(weights, k)) for k in ("feature", "cls", "box")}
    cols["weight"] = w["feature"]
    if weights.decoupled:
        cols["weight_cls"], cols["weight_box"] = w["cls"], w["box"]
    if weights.granularity != "per_gt":
        return {k: np.asarray(v) for k, v in cols.items()}
    n = len(cols["image_id"])
    cols.update(gt=np.full(n, -1), label=np.full(n, -1), num_anchors=np.full(n, -1),
                **{c: np.full(n, np.nan) for c in ("x0", "y0", "x1", "y1")})
    rows = {k: [v] for k, v in cols.items()}
    for b, (g, wg) in enumerate(zip(tl.per_gt, weights.per_gt)):
        G = g.boxes.shape[0]
        box = _np(g.boxes).reshape(G, 4)
        gt_cols = {"image_id": np.full(G, ids[b]), "level": np.full(G, -1),
                   "teacher_cls": _np(g.cls), "teacher_box": _np(g.box), "weight": _np(wg),
                   "gt": np.arange(G), "label": _np(g.labels), "num_anchors": _np(g.num_anchors),
                   "x0": box[:, 0], "y0": box[:, 1], "x1": box[:, 2], "y1": box[:, 3]}
        if weights.decoupled:  # cls/box-side terms have no per-GT form; they use the image's w
            gt_cols["weight_cls"] = np.full(G, w["cls"][b])
            gt_cols["weight_box"] = np.full(G, w["box"][b])
        for k, v in gt_cols.items():
            rows[k].append(v)
    return {k: np.concatenate([np.asarray(x) for x in v]) for k, v in rows.items()}


__all__ = ["AIDWeights", "DetectionWeights", "GRANULARITIES", "aid_detection_weights", "aid_weight_records", "controlled",
           "fpn_strides", "paint_per_gt_mask", "per_gt_weights"]
