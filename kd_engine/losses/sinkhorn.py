"""Sinkhorn-Knopp equipartition pseudo-labels (SwAV / UNO): soft assignments of a batch to K
clusters whose cluster marginals are uniform, from the clusters' logits."""
from __future__ import annotations

from typing import Annotated

from annotated_types import Ge, Gt
import torch


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, epsilon: Annotated[float, Gt(0)] = 0.05,
                   iterations: Annotated[int, Ge(1)] = 3) -> torch.Tensor:
    """(B, K) logits -> (B, K) soft pseudo-labels (rows sum to 1; after the last iteration
    each column sums to B/K). Q = exp(logits/ε), then alternately normalise clusters (rows of
    Qᵀ, to 1/K) and samples (columns, to 1/B); finally scale samples to sum 1. No gradient."""
    if logits.dim() != 2:
        raise ValueError(f"sinkhorn_knopp expects (B, K) logits, got shape {tuple(logits.shape)}")
    z = logits.double() / epsilon
    q = torch.exp(z - z.max()).t()  # (K, B)
    k, b = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).t().to(logits.dtype)
