"""Metrics, from scikit-learn where it has them."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix

__all__ = ["accuracy", "balanced_accuracy", "cka_from_grams", "confusion", "gram", "linear_cka"]


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    return float(accuracy_score(labels, predictions))


def balanced_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    return float(balanced_accuracy_score(labels, predictions))


def confusion(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    return confusion_matrix(labels, predictions, labels=list(range(num_classes)))


def gram(x: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """Sample-space Gram matrix ``x xᵀ`` (n, n) in float64 of an (n, ...) batch.

    Features are flattened and multiplied ``chunk`` columns at a time, so the float64 working copy
    stays at n·chunk values whatever the layer's C·H·W: memory is O(n²) plus the input itself."""
    flat = x.reshape(x.shape[0], -1)
    out = torch.zeros(flat.shape[0], flat.shape[0], dtype=torch.float64, device=flat.device)
    for part in torch.split(flat, chunk, dim=1):
        part = part.double()
        out += part @ part.T
    return out


def cka_from_grams(k: torch.Tensor, l: torch.Tensor) -> float:
    """Linear CKA from two (n, n) Gram matrices: HSIC(K, L) / sqrt(HSIC(K, K)·HSIC(L, L)) with
    K, L double-centred (H K H); the 1/(n-1)² factors of HSIC cancel in the ratio."""
    def centre(g: torch.Tensor) -> torch.Tensor:
        g = g - g.mean(dim=0, keepdim=True)
        return g - g.mean(dim=1, keepdim=True)

    kc, lc = centre(k.double()), centre(l.double())
    norm = torch.linalg.matrix_norm(kc) * torch.linalg.matrix_norm(lc)
    return float((kc * lc).sum() / norm.clamp_min(1e-12))


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear centred kernel alignment (Kornblith et al., 2019) between (n, ...) and (n, ...)
    representations of the same n samples: 1 for identical up to rotation and isotropic scale,
    near 0 for unrelated.

    Computed in sample space, ``‖Hxxᵀ H · Hyyᵀ H‖`` over (n, n) Gram matrices, which equals the
    feature-space form ``‖yᶜᵀ xᶜ‖²_F / (‖xᶜᵀ xᶜ‖_F ‖yᶜᵀ yᶜ‖_F)`` but costs O(n²) memory instead of
    O(p²): a 64×32×32 feature map would need a 65,536² matrix (34 GB) the other way."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka needs the same samples on both sides, got {x.shape[0]} and {y.shape[0]}")
    return cka_from_grams(gram(x), gram(y))
