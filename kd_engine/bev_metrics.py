"""Centre-distance average precision for BEV detection, and heatmap decoding.

A detection is (class, score, x, y) in metres; a true object is (class, x, y, ...). Per class,
every scene's detections are ranked by score together (ties keep their order); each takes the
nearest still-unmatched true object of its class in its own scene within ``radius`` metres (a
true positive) or is a false positive. AP is the mean, over the class's true objects, of the
precision at the rank where each was found (0 for those never found):
AP = (1 / n_true) Σ_{k: rank k is a TP} TP(k) / k. This is the un-interpolated AP of the
precision–recall curve with recall counted against every true object, so missed objects lower
it; nuScenes ranks boxes by centre distance the same way (with 0.5–4 m thresholds). A class
with no true object has AP NaN and is left out of the mean.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def centre_distance_ap(detections: Sequence[np.ndarray], truths: Sequence[np.ndarray], num_classes: int,
                       radius: float = 1.0) -> np.ndarray:
    """(num_classes,) AP per class; ``detections[i]`` (D, 4) rows (class, score, x, y) and
    ``truths[i]`` (M, ≥3) rows (class, x, y, ...) of scene i."""
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} scenes of detections but {len(truths)} of ground truth")
    ap = np.full(num_classes, np.nan)
    scenes = [_rows(t) for t in truths]
    for cls in range(num_classes):
        gts = [g[g[:, 0] == cls, 1:3] for g in scenes]
        n_true = sum(len(g) for g in gts)
        if n_true == 0:
            continue
        rows = [(float(d[1]), i, float(d[2]), float(d[3])) for i, det in enumerate(detections)
                for d in np.asarray(det, float).reshape(-1, 4) if int(d[0]) == cls]
        order = sorted(range(len(rows)), key=lambda k: -rows[k][0])  # stable: ties keep their order
        used = [np.zeros(len(g), bool) for g in gts]
        tp, total = 0, 0.0
        for rank, k in enumerate(order, start=1):
            _, scene, x, y = rows[k]
            dist = np.hypot(gts[scene][:, 0] - x, gts[scene][:, 1] - y)
            dist[used[scene] | (dist > radius)] = np.inf
            if len(dist) and np.isfinite(dist.min()):
                used[scene][int(dist.argmin())] = True
                tp += 1
                total += tp / rank
        ap[cls] = total / n_true
    return ap


def _rows(truth) -> np.ndarray:
    """True objects as a float (M, ≥3) array, also for a scene with none."""
    return np.asarray(truth, float).reshape(len(truth), -1) if len(truth) else np.zeros((0, 3))


def heatmap_peaks(probs: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """``probs`` with every cell that is not the maximum of its kernel × kernel neighbourhood
    (in its own class channel) set to 0: CenterNet's max-pool non-maximum suppression."""
    pooled = F.max_pool2d(probs, kernel, stride=1, padding=kernel // 2)
    return probs * (pooled == probs)


def decode(logits: torch.Tensor, regression: torch.Tensor, output_cell: float, top: int = 30) -> list[np.ndarray]:
    """Per scene, the ``top`` highest peaks of the sigmoid heatmaps (B, K, h, w) as (class,
    score, x, y) rows, the centre at (cell + predicted offset) in metres, origin at the centre."""
    probs = heatmap_peaks(torch.sigmoid(logits.float()))
    b, k, h, w = probs.shape
    scores, flat = probs.flatten(1).topk(min(top, k * h * w), dim=1)
    cls, cell = flat // (h * w), flat % (h * w)
    row, col = cell // w, cell % w
    offset = regression[:, :2].flatten(2).float()  # (B, 2, h·w)
    dx = offset[:, 0].gather(1, cell)
    dy = offset[:, 1].gather(1, cell)
    x = (col.float() + dx - w / 2) * output_cell
    y = (row.float() + dy - h / 2) * output_cell
    out = torch.stack([cls.float(), scores, x, y], dim=2).cpu().numpy()
    return [scene[scene[:, 1] > 0] for scene in out]


def match_counts(detections: np.ndarray, truth: np.ndarray, radius: float = 1.0,
                 threshold: float = 0.3) -> tuple[int, int, int]:
    """(true positives, false positives, missed objects) of one scene's detections scoring at
    least ``threshold``, matched greedily by score as in `centre_distance_ap`."""
    det = np.asarray(detections, float).reshape(-1, 4)
    det = det[det[:, 1] >= threshold]
    det = det[np.argsort(-det[:, 1], kind="stable")]
    gt = _rows(truth)
    used = np.zeros(len(gt), bool)
    tp = 0
    for cls, _, x, y in det:
        dist = np.hypot(gt[:, 1] - x, gt[:, 2] - y)
        dist[used | (gt[:, 0] != cls) | (dist > radius)] = np.inf
        if len(dist) and np.isfinite(dist.min()):
            used[int(dist.argmin())] = True
            tp += 1
    return tp, len(det) - tp, int((~used).sum())
