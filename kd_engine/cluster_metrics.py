"""Scores of an unsupervised segmentation: cluster ids carry no class names, so they are first
matched one-to-one to the classes (Hungarian algorithm, SciPy's ``linear_sum_assignment``, on the
class × cluster confusion matrix, maximising the points on the diagonal), then scored as a
supervised prediction: mIoU over classes, overall accuracy (oAcc) and mean class accuracy (mAcc).
Renaming the clusters changes nothing (the matching undoes it); a class left without a cluster
gets IoU 0. Also the merge of many feature-space primitives into the class count, by k-means
over their centroids (fixed seed and restarts, since the score depends on it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits



@dataclass
class MatchedScores:
    """``mapping[k]`` is the class that cluster k is matched to (−1: unmatched, counted wrong);
    ``confusion`` is the class × class matrix after the matching (rows true, columns predicted)."""

    miou: float
    oacc: float
    macc: float
    iou: np.ndarray
    confusion: np.ndarray
    mapping: np.ndarray


def contingency(true: np.ndarray, clusters: np.ndarray, num_classes: int, num_clusters: int) -> np.ndarray:
    """(classes, clusters) counts of points with true class i in cluster k."""
    table = np.zeros((num_classes, num_clusters), dtype=np.int64)
    np.add.at(table, (np.asarray(true).ravel(), np.asarray(clusters).ravel()), 1)
    return table


def match_clusters(true, clusters, num_classes: int, num_clusters: int | None = None,
                   named: bool = False) -> MatchedScores:
    """Hungarian-match cluster ids (0..num_clusters−1) to classes (0..num_classes−1), then score.
    Points of a true class outside [0, num_classes) are a ValueError. ``named``: the ids already
    are class ids (a method that names points itself): the mapping is the identity, no matching."""
    true, clusters = np.asarray(true).ravel().astype(np.int64), np.asarray(clusters).ravel().astype(np.int64)
    if true.shape != clusters.shape:
        raise ValueError(f"true ({true.size}) and cluster ({clusters.size}) labels differ in length")
    if true.size and (true.min() < 0 or true.max() >= num_classes):
        raise ValueError(f"true classes must lie in [0, {num_classes}), got [{true.min()}, {true.max()}]")
    k = int(num_clusters if num_clusters is not None else max(num_classes, clusters.max(initial=-1) + 1))
    table = contingency(true, clusters, num_classes, k)
    rows, cols = (np.arange(num_classes), np.arange(num_classes)) if named else \
        linear_sum_assignment(table, maximize=True)
    mapping = np.full(k, -1, dtype=np.int64)
    mapping[cols] = rows
    predicted = mapping[clusters]
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    hit = predicted >= 0
    np.add.at(confusion, (true[hit], predicted[hit]), 1)
    lost = np.bincount(true[~hit], minlength=num_classes)  # points of unmatched clusters: false negatives
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) + lost - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    support = confusion.sum(1) + lost
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)
    return MatchedScores(float(np.nanmean(iou)), float(np.trace(confusion) / max(true.size, 1)),
                         float(np.nanmean(per_class)), iou, confusion, mapping)


def merge_primitives(centroids: np.ndarray, num_classes: int, seed: int, restarts: int = 20) -> np.ndarray:
    """(primitives,) class-cluster id of each primitive: k-means with ``restarts`` over the
    L2-normalised centroids (as many clusters as classes, or primitives if fewer)."""
    c = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    with threadpool_limits(1):
        return KMeans(min(num_classes, len(c)), n_init=restarts, random_state=seed).fit_predict(c)


def cluster_points(features: np.ndarray, num_classes: int, primitives: int, seed: int,
                   restarts: int = 20) -> np.ndarray:
    """Unsupervised point labels: k-means of the L2-normalised features into ``primitives``
    clusters, whose centroids are merged into ``num_classes`` by `merge_primitives`."""
    f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    with threadpool_limits(1):
        km = KMeans(min(primitives, len(f)), n_init=1, random_state=seed).fit(f)
    return merge_primitives(km.cluster_centers_, num_classes, seed, restarts)[km.labels_]
