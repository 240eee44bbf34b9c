"""The zero-shot prototype evaluator of open-vocabulary segmentation (ZeroSeg, paper 4).

Classes are named by prototypes, not learned labels: a pixel with embedding f gets the class
c* = argmax_c cos(f, t_c) of the class prompt embeddings t_c, unless its best cosine does not
exceed a threshold τ, where it is background (label 0; classes are 1 + c). τ is chosen on the
validation split (the candidate maximising validation mIoU over background + classes), never on
test. The scores are per-pixel cosines (B, C, H, W); the pixel labels are (B, H, W) with 0 the
background, as in `kd_engine.data.segmentation`.

`window_scores` gives the reference the student is compared with: the teacher itself run on
windows (the cached crop views): each pixel averages the class cosines of the windows that
contain it (the whole image left out, it covers every pixel alike).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from kd_engine.dense_metrics import iou_per_class, pixel_confusion
from kd_engine.parts.crop_views import view_boxes

CANDIDATES = 41  # thresholds tried: evenly ranked values of the validation pixels' best cosines


def thresholded_labels(scores: np.ndarray, threshold: float) -> np.ndarray:
    """(N, C, H, W) class cosines -> (N, H, W) labels: 1 + argmax_c where the best cosine exceeds
    ``threshold``, else 0 (background)."""
    best = scores.max(axis=1)
    return np.where(best > threshold, 1 + scores.argmax(axis=1), 0)


def choose_threshold(scores: np.ndarray, truth: np.ndarray, candidates: int = CANDIDATES) -> tuple[float, float]:
    """(τ, mIoU at τ) maximising the mIoU over background + C classes of `thresholded_labels`
    against ``truth`` (N, H, W), τ among ``candidates`` evenly ranked values of the pixels' best
    cosines (all of them when there are fewer pixels) and one below them all, which names every
    pixel. Ties keep the lowest τ."""
    classes = scores.shape[1] + 1
    best = scores.max(axis=1).ravel()
    ranked = np.sort(best)
    picks = ranked[np.unique(np.linspace(0, len(ranked) - 1, candidates).round().astype(np.int64))]
    grid = np.unique(np.concatenate([[ranked[0] - 1e-6], picks]))
    top_t, top_miou = float(grid[0]), -1.0
    for t in grid:
        iou = iou_per_class(pixel_confusion(truth, thresholded_labels(scores, float(t)), classes))
        value = float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0
        if value > top_miou + 1e-12:
            top_t, top_miou = float(t), value
    return top_t, top_miou


def class_cosines(embeddings: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """cos(e, t_c) of (..., D) embeddings against (C, D) prompts -> (..., C)."""
    return F.normalize(embeddings.float(), dim=-1, eps=1e-8) @ F.normalize(text.float(), dim=-1, eps=1e-8).T


def window_scores(views: torch.Tensor, text: torch.Tensor, grids: Sequence[int], height: int,
                  width: int) -> torch.Tensor:
    """(N, V, D) view embeddings (views in `view_boxes` order) -> (N, C, H, W): per pixel, the mean
    class cosine of the windows (grids other than 1) that cover it."""
    cos = class_cosines(views, text)  # (N, V, C)
    total = torch.zeros(views.shape[0], text.shape[0], height, width)
    count = torch.zeros(1, 1, height, width)
    for v, (g, box) in enumerate(zip([g for g in grids for _ in range(g * g)], view_boxes(grids, height, width))):
        if g == 1:
            continue
        r0, r1, c0, c1 = box
        total[:, :, r0:r1, c0:c1] += cos[:, v, :, None, None]
        count[:, :, r0:r1, c0:c1] += 1
    return total / count.clamp_min(1)
