"""Logit-based distillation losses: KD, DKD, DIST and the Cauchy-Schwarz divergence."""

from __future__ import annotations

from typing import Annotated

from annotated_types import Ge, Gt
import torch
import torch.nn.functional as F

from ._reduce import check_reduction, reduce
from kd_engine.losses.term_registry import term


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student and teacher logits must both have shape (B, C); got student "
            f"{tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)}"
        )


def _kl_rows(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """Per-row KL(p || q) from log-probs; exactly 0 when log_p == log_q (no exp/log round trip)."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=1)


@term("kd", "logits")
def kd(student_logits, teacher_logits, temperature: Annotated[float, Gt(0)] = 4.0, reduction: str = "mean"):
    """Hinton et al. 2015, "Distilling the Knowledge in a Neural Network".

    Per sample: T² · KL(softmax(t/T) ‖ softmax(s/T)), summed over classes. The T² factor keeps
    gradient magnitudes comparable across temperatures (as in mdistiller / RepDistiller).
    """
    check_reduction(reduction)
    _check_logits(student_logits, teacher_logits)
    T = float(temperature)
    log_q = F.log_softmax(student_logits / T, dim=1)
    log_p = F.log_softmax(teacher_logits.detach() / T, dim=1)
    return reduce(_kl_rows(log_q, log_p) * T * T, reduction)


def _binary_and_rest(logits: torch.Tensor, target: torch.Tensor, T: float):
    """Log of [p_target, 1 - p_target] (B, 2) and the non-target logits/T (B, C-1)."""
    z = logits / T
    mask = torch.ones_like(z, dtype=torch.bool).scatter_(1, target.unsqueeze(1), False)
    log_all = torch.logsumexp(z, dim=1, keepdim=True)
    rest = z[mask].view(z.size(0), z.size(1) - 1)
    log_target = z.gather(1, target.unsqueeze(1)) - log_all
    log_other = torch.logsumexp(rest, dim=1, keepdim=True) - log_all  # log(1 - p_target), stable
    return torch.cat([log_target, log_other], dim=1), rest


def dkd_parts(student_logits, teacher_logits, target, temperature: Annotated[float, Gt(0)] = 4.0):
    """Per-sample (TCKD, NCKD) of Decoupled KD (Zhao et al., CVPR 2022), each T²-scaled.

    TCKD: binary KL between teacher and student [p_target, 1 - p_target].
    NCKD: KL between teacher and student distributions over the non-target classes only
    (softmax renormalised without the target). The paper's identity holds per sample:
    KD = TCKD + (1 - p_target_teacher) · NCKD.
    """
    _check_logits(student_logits, teacher_logits)
    if student_logits.size(1) < 2:
        raise ValueError(f"dkd needs at least 2 classes, got {student_logits.size(1)}")
    target = torch.as_tensor(target, device=student_logits.device).long().view(-1)
    if target.numel() != student_logits.size(0):
        raise ValueError(
            f"target must have one label per sample: got {target.numel()} labels "
            f"for logits of shape {tuple(student_logits.shape)}"
        )
    T = float(temperature)
    log_bs, rest_s = _binary_and_rest(student_logits, target, T)
    log_bt, rest_t = _binary_and_rest(teacher_logits.detach(), target, T)
    tckd = _kl_rows(log_bs, log_bt) * T * T
    nckd = _kl_rows(F.log_softmax(rest_s, dim=1), F.log_softmax(rest_t, dim=1)) * T * T
    return tckd, nckd


@term("dkd", "logits_target")
def dkd(student_logits, teacher_logits, target, alpha: Annotated[float, Ge(0)] = 1.0,
        beta: Annotated[float, Ge(0)] = 8.0, temperature: Annotated[float, Gt(0)] = 4.0, reduction: str = "mean"):
    """Decoupled KD (Zhao et al., CVPR 2022): per sample alpha·TCKD + beta·NCKD.

    Decoupling lets the non-target ("dark knowledge") term be weighted independently of the
    teacher's confidence, which in classical KD suppresses it by (1 - p_target).
    """
    check_reduction(reduction)
    tckd, nckd = dkd_parts(student_logits, teacher_logits, target, temperature)
    return reduce(alpha * tckd + beta * nckd, reduction)


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation between matching rows of a and b (0 where a row is constant)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(eps)


@term("dist", "logits")
def dist(student_logits, teacher_logits, beta: Annotated[float, Ge(0)] = 1.0,
         gamma: Annotated[float, Ge(0)] = 1.0, temperature: Annotated[float, Gt(0)] = 1.0, reduction: str = "mean"):
    """DIST (Huang et al., NeurIPS 2022): match relations, not exact probabilities.

    With p = softmax(z/T): inter_i = 1 - pearson(p_s[i], p_t[i]) over classes;
    intra = mean over classes c of 1 - pearson(p_s[:, c], p_t[:, c]) over the batch.
    Batch loss = T²·(beta·mean_i inter_i + gamma·intra).

    Batch-level: the per-sample form ("none") is beta·T²·inter_i + gamma·T²·intra, the batch
    intra term broadcast to every sample, so the mean of the per-sample values is the batch
    loss. With a batch of one the intra term is undefined; constant columns count as
    correlation 0 (so intra = 1, a constant with zero gradient), as in the reference code.
    """
    check_reduction(reduction)
    _check_logits(student_logits, teacher_logits)
    T = float(temperature)
    p_s = F.softmax(student_logits / T, dim=1)
    p_t = F.softmax(teacher_logits.detach() / T, dim=1)
    inter = 1.0 - _pearson_rows(p_s, p_t)
    intra = (1.0 - _pearson_rows(p_s.t(), p_t.t())).mean()
    return reduce(T * T * (beta * inter + gamma * intra), reduction)


def _cs_from_probs(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-8, dim: int = 1) -> torch.Tensor:
    """Cauchy-Schwarz divergence of the distributions laid along ``dim`` (rows by default; the
    dense terms use the class axis of a (B, C, H, W) map or the positions of a (B, C, HW) one);
    invariant to rescaling p or q (up to eps)."""
    cross = (p * q).sum(dim=dim)
    return (-torch.log(cross + eps) + 0.5 * torch.log((p * p).sum(dim=dim) + eps)
            + 0.5 * torch.log((q * q).sum(dim=dim) + eps))


@term("cs", "logits")
def cs_divergence(student_logits, teacher_logits, temperature: Annotated[float, Gt(0)] = 1.0,
                  reduction: str = "mean"):
    """Cauchy-Schwarz divergence (Principe et al., information-theoretic learning).

    Per sample, p = softmax(t/T), q = softmax(s/T):
    -log Σ p·q + ½ log Σ p² + ½ log Σ q² (ε = 1e-8 inside the logs). By the Cauchy-Schwarz
    inequality it is ≥ 0, it is symmetric in p and q, and it is 0 iff p = q.
    """
    check_reduction(reduction)
    _check_logits(student_logits, teacher_logits)
    T = float(temperature)
    q = F.softmax(student_logits / T, dim=1)
    p = F.softmax(teacher_logits.detach() / T, dim=1)
    return reduce(_cs_from_probs(p, q), reduction)


for _fn in (kd, dkd, cs_divergence):
    _fn.batch_level = False
dist.batch_level = True
