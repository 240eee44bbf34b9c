"""Contrastive losses: NT-Xent (SimCLR, Chen et al. 2020), for self-supervised teachers."""
from __future__ import annotations

from typing import Annotated

from annotated_types import Gt
import torch
import torch.nn.functional as F

from ._reduce import check_reduction, reduce


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: Annotated[float, Gt(0)] = 0.5,
            reduction: str = "mean") -> torch.Tensor:
    """Normalised-temperature cross-entropy over 2B views: row i of z1 and row i of z2 are the
    positive pair; the other 2B − 2 views are negatives. Per sample i (the "none" form): the mean
    of the two directions' losses, −log softmax_j(cos(z_a, z_j)/τ)[positive], self excluded.
    Batch-level: the mean of the per-sample values is the usual 2B-view mean."""
    check_reduction(reduction)
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent needs two (B, D) views of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    b = z1.size(0)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.t()) / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    per_view = F.cross_entropy(sim, target, reduction="none")
    return reduce(0.5 * (per_view[:b] + per_view[b:]), reduction)


nt_xent.batch_level = True
