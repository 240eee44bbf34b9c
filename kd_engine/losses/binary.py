"""Binary (one-vs-all) per-logit distillation, for multi-label and detection heads (L2D, ...)."""

from __future__ import annotations

from typing import Annotated

from annotated_types import Ge, Gt
import torch
import torch.nn.functional as F

from ._reduce import check_reduction, reduce
from kd_engine.losses.term_registry import term


@term("binary_kd", "logits")
def binary_kd(student_logits, teacher_logits, temperature: Annotated[float, Gt(0)] = 1.0,
              weight_power: Annotated[float, Ge(0)] = 0.0, reduction: str = "mean"):
    """Per-logit binary KD: each logit is its own Bernoulli, so no softmax couples the classes.

    Per sample: T² · MEAN over classes (all non-batch dims) of the binary KL
    KL(Bern(σ(t/T)) ‖ Bern(σ(s/T))) = BCE(σ(s/T), σ(t/T)) − H(σ(t/T)). Subtracting the teacher
    entropy makes identical logits give exactly 0 while the student gradient equals the soft
    BCE's. Log-probabilities come from ``logsigmoid`` (no clipping needed, stable for large |z|).
    ``weight_power`` β > 0 multiplies each logit's term by |σ(t/T) − σ(s/T)|^β (detached, a
    focus factor as in L2D's variant); β = 0 leaves it unweighted. Inputs (B, C, ...).
    """
    check_reduction(reduction)
    if student_logits.shape != teacher_logits.shape or student_logits.dim() < 2:
        raise ValueError(
            "student and teacher logits must have the same shape (B, C, ...); got student "
            f"{tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)}"
        )
    T = float(temperature)
    zs = student_logits.flatten(1) / T
    zt = teacher_logits.detach().flatten(1) / T
    p = torch.sigmoid(zt)
    log_p, log_1mp = F.logsigmoid(zt), F.logsigmoid(-zt)
    log_q, log_1mq = F.logsigmoid(zs), F.logsigmoid(-zs)
    kl = p * (log_p - log_q) + (1.0 - p) * (log_1mp - log_1mq)
    if weight_power:
        kl = kl * (p - torch.sigmoid(zs.detach())).abs().pow(float(weight_power))
    return reduce(kl.mean(dim=1) * T * T, reduction)


binary_kd.batch_level = False
