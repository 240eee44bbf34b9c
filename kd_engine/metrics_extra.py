"""Further metrics (AUROC, multi-label mAP, Hungarian accuracy, ECE), from scikit-learn and
scipy where they exist, so every method reports them the same way."""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = ["auroc", "ece", "hungarian_accuracy", "multilabel_map"]


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def auroc(labels, scores) -> float:
    """Area under the ROC curve of binary ``labels`` (1 = positive) ranked by ``scores``."""
    return float(roc_auc_score(_np(labels), _np(scores)))


def multilabel_map(targets, scores) -> float:
    """Macro mean of per-label average precision over the labels with at least one positive
    (AP is undefined without positives, so such labels are left out rather than counted 0).
    ``targets`` and ``scores`` are (N, L)."""
    t, s = _np(targets), _np(scores)
    keep = t.sum(axis=0) > 0
    if not keep.any():
        raise ValueError("multilabel_map: no label has a positive example")
    return float(average_precision_score(t[:, keep], s[:, keep], average="macro"))


def hungarian_accuracy(labels, clusters) -> float:
    """Clustering accuracy: the best one-to-one map from cluster ids to labels (Hungarian
    algorithm on the label×cluster contingency table), then plain accuracy. Invariant to any
    renaming of the clusters; ids need not be contiguous and the counts may differ."""
    y, c = _np(labels).ravel(), _np(clusters).ravel()
    if y.size != c.size:
        raise ValueError(f"labels ({y.size}) and clusters ({c.size}) differ in length")
    _, yi = np.unique(y, return_inverse=True)
    _, ci = np.unique(c, return_inverse=True)
    table = np.zeros((yi.max() + 1, ci.max() + 1), dtype=np.int64)
    np.add.at(table, (yi, ci), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / y.size)


def ece(probs, labels, bins: int = 15) -> float:
    """Expected calibration error (Guo et al., 2017): Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|,
    with confidence = max class probability and ``bins`` equal-width bins over (0, 1].
    ``probs`` is (N, C) class probabilities; ``labels`` (N,)."""
    p, y = _np(probs), _np(labels).ravel()
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    correct = (pred == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.sum() / y.size * abs(correct[sel].mean() - conf[sel].mean())
    return float(total)
