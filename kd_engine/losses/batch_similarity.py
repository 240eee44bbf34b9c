"""Batch-similarity distillation: PKT, similarity-preserving KD and correlation congruence.

All three compare B×B matrices that say how alike the samples of a batch are, once in the
teacher's feature space and once in the student's, so student and teacher widths may differ.
Each is batch-level: sample i owns row i of the B×B comparison, and its per-sample value
("none") is that row's contribution divided by B, so the batch mean of the per-sample values
is exactly the batch loss (a mean over the B² entries).
"""
from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt

from ._reduce import check_reduction, reduce
from kd_engine.losses.term_registry import term


def _pair(name: str, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, D_s) and (B, D_t) views of the two inputs (extra dims flattened), teacher detached."""
    if student.dim() < 2 or teacher.dim() < 2 or student.size(0) != teacher.size(0):
        raise ValueError(f"{name} needs (B, ...) inputs with the same batch size; got student "
                         f"{tuple(student.shape)} and teacher {tuple(teacher.shape)}")
    return student.flatten(1), teacher.detach().flatten(1)


def _cosine_probabilities(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Row i: the conditional distribution p(j | i) ∝ (cos(x_i, x_j) + 1) / 2 over j (diagonal included).

    Rows are scaled to unit length with ``eps`` added to the norm (an all-zero row stays zero
    and its similarities are all 1/2 after the shift, never NaN)."""
    unit = x / (x.norm(dim=1, keepdim=True) + eps)
    kernel = (unit @ unit.t() + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


@term("pkt", "embedding")
def pkt(student_embedding, teacher_embedding, eps: Annotated[float, Gt(0)] = 1e-7,
        reduction: str = "mean"):
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), cosine-similarity kernel.

    K(a, b) = (cos(a, b) + 1) / 2 maps similarities to [0, 1]; each row of the B×B kernel is
    divided by its sum (the diagonal, K = 1, included, as in the authors' release) to give the
    conditional probabilities p_t(j|i) (teacher) and p_s(j|i) (student). The divergence is
    KL(teacher ‖ student) with ``eps`` inside the ratio:

        batch loss = (1 / B²) Σ_i Σ_j p_t(j|i) · log((p_t(j|i) + eps) / (p_s(j|i) + eps)),

    the mean over the B² entries, as in the authors' release and the common re-implementations
    (the paper writes the plain double sum; the scale only moves the term weight). Per sample
    i ("none"): (1 / B) · Σ_j of row i, i.e. sample i's own KL divided by B. It is zero when
    the two batches have the same cosine geometry (e.g. identical inputs, or one a positive
    multiple of the other).
    """
    check_reduction(reduction)
    s, t = _pair("pkt", student_embedding, teacher_embedding)
    p_s, p_t = _cosine_probabilities(s, eps), _cosine_probabilities(t, eps)
    entries = p_t * torch.log((p_t + eps) / (p_s + eps))
    return reduce(entries.mean(dim=1), reduction)


def _row_normalised_gram(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x @ x.t(), p=2, dim=1)


@term("similarity_preserving", "embedding")
def similarity_preserving(student_feature, teacher_feature, reduction: str = "mean"):
    """Similarity-preserving KD (Tung & Mori, ICCV 2019).

    With Q the (B, C·H·W) flattened features, G = Q·Qᵀ is the B×B batch Gram matrix and G̃
    is G with each row scaled to unit L2 norm. Batch loss = ‖G̃_S − G̃_T‖²_F / B² (for one
    layer pair; the paper sums such terms over pairs, here one term per configured pair).
    Per sample i ("none"): (1 / B) · Σ_j (G̃_S − G̃_T)²_ij, so the mean is the batch loss.
    Only inner products between samples enter, so any width per side works, and the loss is
    unchanged when the same permutation of feature positions is applied to every sample.
    """
    check_reduction(reduction)
    s, t = _pair("similarity_preserving", student_feature, teacher_feature)
    diff = _row_normalised_gram(s) - _row_normalised_gram(t)
    return reduce(diff.pow(2).sum(dim=1) / s.size(0), reduction)


def _taylor_rbf(x: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    """B×B Gaussian RBF exp(-γ‖x_i − x_j‖²) on unit rows, by its order-P Taylor expansion.

    For unit vectors ‖x_i − x_j‖² = 2 − 2·x_iᵀx_j, so the kernel is e^{−2γ}·e^{2γ·x_iᵀx_j}
    ≈ e^{−2γ} Σ_{p=0..P} (2γ)^p (x_iᵀx_j)^p / p!."""
    unit = F.normalize(x, p=2, dim=1)
    cos = unit @ unit.t()
    series = sum((2.0 * gamma) ** p / math.factorial(p) * cos.pow(p) for p in range(order + 1))
    return math.exp(-2.0 * gamma) * series


@term("cc", "embedding")
def cc(student_embedding, teacher_embedding, gamma: Annotated[float, Gt(0)] = 0.4,
       order: Annotated[int, Ge(0)] = 2, reduction: str = "mean"):
    """Correlation congruence (Peng et al., ICCV 2019), Gaussian-RBF kernel by Taylor series.

    Variant: the paper's generalised kernel, not the bilinear form. Embeddings are scaled to
    unit length and the correlation matrix is ψ(F)_ij = k(f_i, f_j) with the Gaussian RBF
    k(x, y) = exp(−γ‖x − y‖²) expanded to order P around x_iᵀx_j (defaults γ = 0.4, P = 2, the
    paper's). Batch loss = ‖ψ(F_T) − ψ(F_S)‖²_F / B². Only the correlation term is here; the
    paper pairs it with the instance-level KD term, which is a separate ``kd`` term in a config.
    Per sample i ("none"): (1 / B) · Σ_j of row i of the squared difference.
    """
    check_reduction(reduction)
    s, t = _pair("cc", student_embedding, teacher_embedding)
    diff = _taylor_rbf(s, gamma, order) - _taylor_rbf(t, gamma, order)
    return reduce(diff.pow(2).sum(dim=1) / s.size(0), reduction)


for _fn in (pkt, similarity_preserving, cc):
    _fn.batch_level = True
