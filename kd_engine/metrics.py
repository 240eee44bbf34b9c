"""Metrics, from scikit-learn where it has them."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix

__all__ = ["accuracy", "balanced_accuracy", "confusion", "linear_cka"]


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    return float(accuracy_score(labels, predictions))


def balanced_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    return float(balanced_accuracy_score(labels, predictions))


def confusion(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    return confusion_matrix(labels, predictions, labels=list(range(num_classes)))


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear centred kernel alignment (Kornblith et al., 2019) between (n, p) and (n, q)
    representations: 1 for identical up to rotation and scale, near 0 for unrelated."""
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    cross = (y.T @ x).pow(2).sum()
    norm = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(cross / norm.clamp_min(1e-12))
