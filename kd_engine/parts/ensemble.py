"""Weighted ensembles of several frozen teachers: per-instance or dataset-level softmin of the
teachers' held-out losses (trust the teacher that is right on data it never saw), uniform, or a
single teacher. Pure tensor functions, shared by any method that distils from a teacher group."""
from __future__ import annotations

from typing import Annotated, Sequence

from annotated_types import Gt
import torch
import torch.nn.functional as F


def softmin_weights(losses: torch.Tensor, tau: Annotated[float, Gt(0)] = 1.0) -> torch.Tensor:
    """(N, K) losses of K teachers -> (N, K) weights softmax(−ℓ/τ) per row: positive, summing to
    one, ordered like the losses reversed (lower loss, higher weight)."""
    if losses.dim() != 2:
        raise ValueError(f"softmin_weights: expected (N, K) losses, got shape {tuple(losses.shape)}")
    return torch.softmax(-losses / float(tau), dim=1)


def ensemble_logits(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(K, N, C) teacher logits and (N, K) weights -> (N, C) Σ_k w_k z_k."""
    return torch.einsum("knc,nk->nc", logits, weights)


def modality_weights(ensemble: str, losses: torch.Tensor, tau: Annotated[float, Gt(0)],
                     names: Sequence[str]) -> torch.Tensor:
    """The (N, K) weights of K teachers (``names``) under an ``ensemble`` rule, from their (N, K)
    held-out losses: ``softmin`` (per row), ``dataset_softmin`` (of the mean loss, every row alike),
    ``uniform``, ``best`` (all on the lowest mean loss) or one of ``names`` (all on that teacher)."""
    n, k = losses.shape
    if ensemble == "softmin":
        return softmin_weights(losses, tau)
    if ensemble == "dataset_softmin":
        return softmin_weights(losses.mean(0, keepdim=True), tau).expand(n, k).clone()
    if ensemble == "uniform":
        return losses.new_full((n, k), 1.0 / k)
    chosen = int(losses.mean(0).argmin()) if ensemble == "best" else list(names).index(ensemble)
    return F.one_hot(torch.full((n,), chosen, device=losses.device), k).to(losses.dtype)
