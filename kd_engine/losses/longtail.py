"""Long-tail losses: logit-adjusted cross-entropy (Menon et al., 2021; MDCS's diverse experts)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._reduce import check_reduction, reduce


def log_prior(counts) -> torch.Tensor:
    """log π_c from class counts (a class with no example counts as one, so the log is finite)."""
    counts = torch.as_tensor(counts, dtype=torch.float32).clamp_min(1.0)
    return (counts / counts.sum()).log()


def adjust_logits(logits: torch.Tensor, prior_log: torch.Tensor, lam: float) -> torch.Tensor:
    """z̃ = z + λ·log π. λ > 0 pushes the trained (unadjusted) logits toward the tail classes,
    λ < 0 toward the head; λ = 0 is plain CE. Log counts differ from log π by a constant, which
    softmax ignores, so either may be used."""
    return logits + float(lam) * prior_log.to(logits)


def logit_adjusted_ce(logits: torch.Tensor, target: torch.Tensor, prior_log: torch.Tensor,
                      lam: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """Per sample CE(z + λ·log π, y)."""
    check_reduction(reduction)
    return reduce(F.cross_entropy(adjust_logits(logits, prior_log, lam), target, reduction="none"),
                  reduction)


logit_adjusted_ce.batch_level = False
