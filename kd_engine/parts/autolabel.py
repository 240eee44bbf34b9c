"""Unsupervised 3-D auto-labels from motion and from 2-D vision–language similarity, zero-shot
naming of point clusters, and instance recall (UP-VL, ICCV 2023, paper 11; the pipeline's
details are a reconstruction, the paper publishes no code).

Per scene, on the current frame's points (numpy arrays, one row per point):

1. *Segments*: the points above the ground are grouped by scikit-learn's DBSCAN (Euclidean
   ``eps``, ``min_samples``); DBSCAN's noise points belong to no segment. Ground removal is
   the caller's (here: a height threshold over the known ground plane).
2. *Moving* segments: a point moves when its nearest neighbour in the previous frame (SciPy's
   k-d tree) is farther than ``motion_threshold``: static surfaces are re-sampled between
   frames but stay within the sampling spacing, a moved object leaves its old place. A segment
   whose share of moving points reaches ``motion_fraction`` is a motion auto-label. This is the
   class-agnostic baseline's only source of labels.
3. *Static* segments: of the remaining segments, those whose visible points look like some class
   to the 2-D teacher, mean_p max_c cos(F_2D(u_p, v_p), t_c) ≥ ``vl_threshold`` over the classes
   allowed in labelling, become static auto-labels. A segment without a visible point is never
   labelled (the camera has nothing to say about it).

Naming (``name_clusters``): cluster k gets argmax_c mean_{p ∈ k} cos(f_3D(p), t_c), the
teacher's class embeddings t_c being the only source of class names.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from sklearn.cluster import DBSCAN

MOVING, STATIC = 1, 2  # auto-label sources, as recorded per cluster


def moving_points(current: np.ndarray, previous: np.ndarray, threshold: float) -> np.ndarray:
    """(N, 3) and (M, 3) points -> (N,) bool: the nearest previous point is farther than ``threshold``."""
    if len(current) == 0:
        return np.zeros(0, dtype=bool)
    if len(previous) == 0:
        return np.ones(len(current), dtype=bool)
    distance, _ = cKDTree(previous).query(current, k=1)
    return distance > threshold


def segments(points: np.ndarray, keep: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    """(N,) segment id per point from DBSCAN over ``points[keep]``; −1 for noise and for points not kept."""
    ids = np.full(len(points), -1, dtype=np.int64)
    if keep.sum() == 0:
        return ids
    ids[keep] = DBSCAN(eps=eps, min_samples=min_samples).fit(points[keep]).labels_
    return ids


@dataclass
class AutoLabels:
    """One scene's auto-labels: ``cluster`` (N,) id per point (−1: not labelled), ``source`` (K,)
    MOVING or STATIC per cluster id, and ``moving`` (N,) the differencing result."""

    cluster: np.ndarray
    source: np.ndarray
    moving: np.ndarray

    @property
    def objectness(self) -> np.ndarray:
        return (self.cluster >= 0).astype(np.float32)

    def count(self, source: int) -> int:
        return int((self.source == source).sum())


def auto_label(current: np.ndarray, previous: np.ndarray, above_ground: np.ndarray, similarity: np.ndarray,
               visible: np.ndarray, *, eps: float, min_samples: int, motion_threshold: float,
               motion_fraction: float, vl_threshold: float | None) -> AutoLabels:
    """Auto-labels of one scene (see the module docstring). ``similarity`` (N,) is each point's
    max_c cos(F_2D(u, v), t_c) over the labelling classes (read only where ``visible``);
    ``vl_threshold=None`` gives the motion-only labels."""
    moving = moving_points(current, previous, motion_threshold) & above_ground
    segment = segments(current, above_ground, eps, min_samples)
    cluster = np.full(len(current), -1, dtype=np.int64)
    source: list[int] = []
    for k in range(segment.max() + 1):
        members = segment == k
        if moving[members].mean() >= motion_fraction:
            kind = MOVING
        elif vl_threshold is not None and (members & visible).any() \
                and similarity[members & visible].mean() >= vl_threshold:
            kind = STATIC
        else:
            continue
        cluster[members] = len(source)
        source.append(kind)
    return AutoLabels(cluster, np.asarray(source, dtype=np.int64), moving)


def cosine_to_classes(features: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """(N, D) features and (K, D) class embeddings -> (N, K) cosine similarities."""
    f = features / np.maximum(np.linalg.norm(features, axis=-1, keepdims=True), 1e-8)
    t = embeddings / np.maximum(np.linalg.norm(embeddings, axis=-1, keepdims=True), 1e-8)
    return f @ t.T


def name_clusters(features: np.ndarray, cluster: np.ndarray, embeddings: np.ndarray) -> dict[int, int]:
    """Zero-shot naming: {cluster id: argmax_c mean_{p in cluster} cos(f_p, t_c)} for every id ≥ 0."""
    cos = cosine_to_classes(features, embeddings)
    return {int(k): int(cos[cluster == k].mean(0).argmax()) for k in np.unique(cluster[cluster >= 0])}


def instance_recall(true_instance: np.ndarray, predicted: np.ndarray, iou: float = 0.5) -> dict[int, bool]:
    """{true instance id: found} where found means some predicted cluster covers it with point
    IoU ≥ ``iou`` (ids < 0 are no instance, on either side). With IoU ≥ 0.5 one predicted
    cluster can match at most one true instance, so over-merged objects are missed."""
    found = {}
    for t in np.unique(true_instance[true_instance >= 0]):
        members = true_instance == t
        best = 0.0
        for k in np.unique(predicted[members & (predicted >= 0)]):
            mine = predicted == k
            best = max(best, (members & mine).sum() / (members | mine).sum())
        found[int(t)] = best >= iou
    return found
