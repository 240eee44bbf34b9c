"""DINO's self-distillation target: a centred, sharpened teacher distribution and the student's
cross-entropy to it (AdaSim, paper 14; the "centred, sharpened teacher" variant of soft CE)."""
from __future__ import annotations

from typing import Annotated

from annotated_types import Gt, Interval
import torch

from kd_engine.losses._reduce import reduce


def dino_cross_entropy(student_out: torch.Tensor, teacher_out: torch.Tensor, center: torch.Tensor,
                       student_temp: Annotated[float, Gt(0)] = 0.1,
                       teacher_temp: Annotated[float, Gt(0)] = 0.04,
                       reduction: str = "mean") -> torch.Tensor:
    """H(P_T, P_S) = −Σ_k softmax((t − c)/τ_T)_k · log softmax(s/τ_S)_k per sample. The teacher
    side carries no gradient."""
    target = torch.softmax((teacher_out.detach().float() - center) / teacher_temp, dim=-1)
    log_p = torch.log_softmax(student_out.float() / student_temp, dim=-1)
    return reduce(-(target * log_p).sum(-1), reduction)


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher_out: torch.Tensor,
                   momentum: Annotated[float, Interval(ge=0, le=1)] = 0.9) -> torch.Tensor:
    """c ← m·c + (1 − m)·mean_batch(t)."""
    return center * momentum + (1.0 - momentum) * teacher_out.detach().float().mean(0, keepdim=True)
