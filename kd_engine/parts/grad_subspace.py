"""Low-rank gradient subspaces for steering unreliable gradients (OTD, paper 5; a reconstruction).

``GradientSubspace`` keeps the last M flattened gradients of a reliable stream (fixed parameter
order), refreshes U_r (the left singular vectors reaching ``energy`` of Σσ²) every ``refresh``
pushes, and projects g' = U_rU_rᵀg + α(I − U_rU_rᵀ)g. ``gradient_surrogate`` turns a wanted
change of the gradient into a loss term of value 0 whose gradient is that change, so a method can
steer gradients inside the ordinary single backward pass of the trainers.
"""
from __future__ import annotations

from collections import deque

import torch


def flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def unflat(vector: torch.Tensor, like) -> list[torch.Tensor]:
    out, start = [], 0
    for t in like:
        out.append(vector[start:start + t.numel()].view_as(t))
        start += t.numel()
    return out


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest r with Σ_{i<r} σ_i² ≥ energy·Σσ² (at least 1)."""
    e = singular_values.double() ** 2
    if float(e.sum()) <= 0:
        return 1
    cum = torch.cumsum(e, 0) / e.sum()
    return int(min(len(e), int((cum < energy - 1e-12).sum()) + 1))


def project(g: torch.Tensor, basis: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """U Uᵀ g + α (g − U Uᵀ g); the identity when there is no basis yet."""
    if basis is None:
        return g
    inside = basis @ (basis.T @ g)
    return inside + alpha * (g - inside)


def gradient_surrogate(params, delta) -> torch.Tensor:
    """Σ ⟨δ_p, p − sg(p)⟩: value 0, gradient δ_p for each parameter p."""
    return sum((d.detach() * (p - p.detach())).sum() for p, d in zip(params, delta))


class GradientSubspace:
    def __init__(self, size: int = 30, refresh: int = 10, energy: float = 0.9):
        self.buffer: deque[torch.Tensor] = deque(maxlen=int(size))
        self.refresh, self.energy = int(refresh), float(energy)
        self.basis: torch.Tensor | None = None
        self.singular_values: torch.Tensor | None = None
        self._pushes = 0

    def push(self, g: torch.Tensor) -> None:
        self.buffer.append(g.detach().float().clone())
        self._pushes += 1
        if self.basis is None or self._pushes % self.refresh == 0:
            self.update()

    def update(self) -> None:
        if len(self.buffer) < 2:
            return
        u, s, _ = torch.linalg.svd(torch.stack(list(self.buffer), 1), full_matrices=False)
        self.singular_values = s
        self.basis = u[:, :energy_rank(s, self.energy)]

    @property
    def rank(self) -> int:
        return 0 if self.basis is None else int(self.basis.shape[1])

    def cosine(self, g: torch.Tensor) -> float:
        """‖UUᵀg‖/‖g‖: how much of g lies in the subspace (0 when there is none)."""
        if self.basis is None or float(g.norm()) == 0:
            return 0.0
        return float((self.basis.T @ g).norm() / g.norm())

    def energy_at(self, r: int) -> float:
        if self.singular_values is None:
            return 0.0
        e = self.singular_values.double() ** 2
        return float(e[:r].sum() / e.sum()) if float(e.sum()) > 0 else 0.0
