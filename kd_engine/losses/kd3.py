"""KD³'s loss pieces (paper 12; every formula here is a *reconstruction* from the abstract):
dynamic selection scores, classifier alignment, MixDistribution and instance InfoNCE."""
from __future__ import annotations

from typing import Annotated

from annotated_types import Gt, Interval
import torch
import torch.nn.functional as F

from kd_engine.losses._reduce import reduce


def selection_scores(teacher_logits: torch.Tensor, student_logits: torch.Tensor | None):
    """(score, confidence) per sample. With a student: p̄ = ½(p_T + p_S), c = max p̄,
    a = 1[argmax z_T = argmax z_S], score = c·(0.5 + 0.5a). Without (teacher-only): c = max p_T,
    score = c."""
    p_t = teacher_logits.detach().float().softmax(1)
    if student_logits is None:
        c = p_t.max(1).values
        return c, c
    p_s = student_logits.detach().float().softmax(1)
    c = (0.5 * (p_t + p_s)).max(1).values
    agree = (teacher_logits.argmax(1) == student_logits.argmax(1)).float()
    return c * (0.5 + 0.5 * agree), c


def top_fraction(score: torch.Tensor, fraction: Annotated[float, Interval(gt=0, le=1)]) -> torch.Tensor:
    """Boolean mask of the ceil(fraction·B) highest scores (at least one)."""
    k = max(1, min(len(score), int(torch.ceil(torch.tensor(fraction * len(score))).item())))
    mask = torch.zeros_like(score, dtype=torch.bool)
    mask[score.topk(k).indices] = True
    return mask


def classifier_alignment(w_s: torch.Tensor, adapter_w: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    """‖W_S A⁺ − W_T‖²_F / numel: the student classifier mapped into teacher feature space by the
    pseudo-inverse of the feature adapter A (f_T ≈ A f_S), compared with the teacher's. A⁺ is
    detached: the term moves the student classifier, not the adapter."""
    mapped = w_s @ torch.linalg.pinv(adapter_w.detach().float())
    return F.mse_loss(mapped, w_t.detach().float(), reduction="mean")


def mix_distribution(feat: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor, eps: float = 1e-5):
    """Mix per-sample channel statistics of a (B, C, H, W) map with those of ``perm``'s samples:
    μ' = λμ_i + (1−λ)μ_j, σ' likewise; x̃ = σ'(x − μ_i)/σ_i + μ'. ``lam`` is (B,)."""
    mu = feat.mean(dim=(2, 3), keepdim=True)
    sigma = (feat.var(dim=(2, 3), keepdim=True, unbiased=False) + eps).sqrt()
    lam = lam.view(-1, 1, 1, 1).to(feat)
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sigma_mix = lam * sigma + (1 - lam) * sigma[perm]
    return sigma_mix * (feat - mu) / sigma + mu_mix


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: Annotated[float, Gt(0)] = 0.2, reduction: str = "mean"):
    """Per sample i: −log softmax_j(cos(z1_i, z2_j)/τ)[i] (positives on the diagonal)."""
    a, b = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    logits = a @ b.T / temperature
    return reduce(F.cross_entropy(logits, torch.arange(len(a), device=a.device), reduction="none"), reduction)
