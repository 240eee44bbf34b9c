"""A memory bank of L2-normalised features with a history of kNN votes (AdaSim, paper 14), and
the partner rules that read it: none (DINO), always the nearest neighbour (naive bootstrapping),
or AdaSim's adaptive rule.

Per row i (a training image), after each step the current query (the teacher backbone feature of
view 1) is compared with the bank *before* the row's own entry is refreshed, so the image's own
entry (from an earlier epoch and another augmentation) competes with its neighbours. The top-k
(self included) of each epoch are kept for the last ``history`` epochs; S_sum(i, j) is the sum of
the recorded similarities over that history.
"""
from __future__ import annotations

from collections import deque

import torch


def adaptive_partners(s_sum: torch.Tensor, rows: torch.Tensor, k: int, zeta: float, history: int,
                      generator: torch.Generator | None = None):
    """AdaSim's rule on dense vote sums ``s_sum`` (B, N), the rows' own indices ``rows`` (B,).

    If the top-voted candidate is not the image itself, the votes are unreliable and the partner
    is the image (no bootstrapping). Otherwise the partner is drawn from softmax(S_sum/(V·ζ)) over
    the top-k candidates, the image included. Returns (partner, reliable, probabilities (B, k),
    candidates (B, k))."""
    k = min(k, s_sum.shape[1])
    b = torch.arange(len(rows))
    others = s_sum.clone()
    others[b, rows] = float("-inf")
    reliable = s_sum[b, rows] >= others.max(1).values  # ties go to the image itself
    first = s_sum.clone()
    first[b, rows] = float("inf")                       # the image is always a candidate, first
    candidates = first.topk(k, dim=1).indices
    values = s_sum.gather(1, candidates)
    probs = torch.softmax(values / (history * zeta), dim=1)
    draw = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(rows.device)
    sampled = candidates.gather(1, draw.unsqueeze(1)).squeeze(1)
    return torch.where(reliable, sampled, rows), reliable, probs, candidates


class KNNVoteMemory:
    """Bank (N, D) of normalised features, the current epoch's top-k, a V-epoch vote history."""

    def __init__(self, size: int, dim: int, k: int, history: int):
        self.k, self.history = int(k), int(history)
        self.bank = torch.zeros(size, dim)
        self.filled = torch.zeros(size, dtype=torch.bool)
        self.epoch_idx = torch.full((size, self.k), -1, dtype=torch.long)
        self.epoch_sim = torch.zeros(size, self.k)
        self.past: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=self.history)

    @property
    def full(self) -> bool:
        return len(self.past) >= self.history

    def similarities(self, query: torch.Tensor) -> torch.Tensor:
        """(B, N) cosine similarities to the bank; entries never filled are −inf."""
        sims = torch.nn.functional.normalize(query.float(), dim=1) @ self.bank.T
        return sims.masked_fill(~self.filled.unsqueeze(0), float("-inf"))

    def record(self, rows: torch.Tensor, sims: torch.Tensor) -> None:
        """Keep the rows' top-k of this step (self included) for this epoch's votes."""
        k = min(self.k, sims.shape[1])
        values, idx = sims.topk(k, dim=1)
        idx = torch.where(torch.isfinite(values), idx, torch.full_like(idx, -1))
        self.epoch_idx[rows, :k], self.epoch_sim[rows, :k] = idx, values.nan_to_num(0.0, neginf=0.0)

    def update(self, rows: torch.Tensor, features: torch.Tensor) -> None:
        self.bank[rows] = torch.nn.functional.normalize(features.detach().float(), dim=1)
        self.filled[rows] = True

    def end_epoch(self) -> None:
        self.past.append((self.epoch_idx.clone(), self.epoch_sim.clone()))
        self.epoch_idx.fill_(-1)
        self.epoch_sim.zero_()

    def state(self) -> dict[str, torch.Tensor]:
        """Everything a resumed run needs (tensors only: `torch.load(weights_only=True)` reads it)."""
        past = list(self.past)
        empty = torch.zeros((0, *self.epoch_idx.shape), dtype=torch.long)
        return {"bank": self.bank, "filled": self.filled, "epoch_idx": self.epoch_idx,
                "epoch_sim": self.epoch_sim,
                "past_idx": torch.stack([i for i, _ in past]) if past else empty,
                "past_sim": torch.stack([s for _, s in past]) if past else empty.float()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        if tuple(state["bank"].shape) != tuple(self.bank.shape):
            raise ValueError(f"kNN memory of shape {tuple(state['bank'].shape)} does not fit "
                             f"{tuple(self.bank.shape)} (another training split or embedding size)")
        for name in ("bank", "filled", "epoch_idx", "epoch_sim"):
            getattr(self, name).copy_(state[name])
        self.past.clear()
        self.past.extend(zip(state["past_idx"].clone(), state["past_sim"].clone()))

    def vote_sums(self, rows: torch.Tensor) -> torch.Tensor:
        """Dense S_sum (B, N) over the history for the given rows."""
        out = torch.zeros(len(rows), self.bank.shape[0])
        for idx, sim in self.past:
            i, s = idx[rows], sim[rows]
            valid = i >= 0
            out.scatter_add_(1, i.clamp(min=0), torch.where(valid, s, torch.zeros_like(s)))
        return out
