"""Class-relation distillation for novel class discovery (Cr-KD, paper 10).

On *unlabelled* (novel) samples, the frozen known-class model's distribution over the known
classes is a class-relation target for the new model's known head, weighted per sample by a
gate computed from the new model's own output and **not detached** (the gate learns: its
gradient reaches the student, including the novel heads). Temperatures are stacked: logits are
divided by τ, then by T.
"""
from __future__ import annotations

from typing import Annotated

from annotated_types import Gt
import torch
import torch.nn.functional as F

from ._reduce import reduce


def relation_gate(student_all: torch.Tensor, known: int, tau: Annotated[float, Gt(0)] = 0.1,
                  temperature: Annotated[float, Gt(0)] = 4.0) -> torch.Tensor:
    """u_i = Σ_{c < known} softmax(z_all,i / (τT))_c, renormalised by its batch mean (u / mean u),
    with its gradient kept. ``student_all``: (B, K + N) logits [known, novel]."""
    u = F.softmax(student_all / (tau * temperature), dim=1)[:, :known].sum(1)
    return u / u.mean()


def class_relation_kd(student_known: torch.Tensor, teacher_known: torch.Tensor, gate: torch.Tensor | None = None,
                      tau: Annotated[float, Gt(0)] = 0.1, temperature: Annotated[float, Gt(0)] = 4.0,
                      reduction: str = "mean") -> torch.Tensor:
    """Per sample: −T² · u_i · Σ_c p_ic log q_ic with p = sg(softmax(z_T/(τT))), q = softmax(z_S/(τT))
    over the known classes (soft cross-entropy, as in Cr-KD's public code); ``gate`` None means u ≡ 1."""
    scale = tau * temperature
    p = F.softmax(teacher_known.detach() / scale, dim=1)
    soft_ce = -(p * F.log_softmax(student_known / scale, dim=1)).sum(1)
    per_sample = temperature ** 2 * soft_ce
    if gate is not None:
        per_sample = gate * per_sample
    return reduce(per_sample, reduction)
