"""Losses on the affinities of a batch of B image–caption pairs (two-tower models).

All embeddings are L2-normalised (rows of I, X ∈ ℝ^{B×D}); with a logit scale s the image→text
affinities are A_i2t = s·I Xᵀ and the text→image ones A_t2i = s·X Iᵀ = A_i2tᵀ. Pair i is row i
of both, so the per-sample ("none") form of each loss is the mean of the two directions' row i.
"""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Gt

from ._reduce import check_reduction, reduce


def _check_pairs(*embeddings: torch.Tensor) -> None:
    shapes = {tuple(e.shape[:1]) for e in embeddings}
    if any(e.dim() != 2 for e in embeddings) or len(shapes) != 1:
        raise ValueError("image–text losses need (B, D) embeddings with one B, got "
                         + ", ".join(str(tuple(e.shape)) for e in embeddings))


def affinities(image: torch.Tensor, text: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(A_i2t, A_t2i) of normalised (B, D) image and text embeddings at logit scale ``scale``."""
    a = scale * image @ text.T
    return a, a.T


def clip_infonce(image: torch.Tensor, text: torch.Tensor, scale: Annotated[float, Gt(0)] = 20.0,
                 reduction: str = "mean") -> torch.Tensor:
    """CLIP's symmetric InfoNCE (Radford et al. 2021). Per pair i:

        ½·[−log softmax_j(A_i2t[i, j])[i] − log softmax_j(A_t2i[i, j])[i]],

    the caption of image i being its positive and the batch's other captions its negatives (and
    the other way round). Batch-level: the mean over pairs is the usual CLIP loss."""
    check_reduction(reduction)
    _check_pairs(image, text)
    i2t, t2i = affinities(image, text, float(scale))
    target = torch.arange(len(image), device=image.device)
    per_pair = 0.5 * (F.cross_entropy(i2t, target, reduction="none") + F.cross_entropy(t2i, target, reduction="none"))
    return reduce(per_pair, reduction)


clip_infonce.batch_level = True


def affinity_soft_ce(student_image: torch.Tensor, student_text: torch.Tensor, teacher_image: torch.Tensor,
                     teacher_text: torch.Tensor, scale: Annotated[float, Gt(0)] = 50.0,
                     teacher_scale: Annotated[float, Gt(0)] | None = None, reduction: str = "mean") -> torch.Tensor:
    """TinyCLIP's affinity mimicking (Wu et al., ICCV 2023). Per pair i, with P = softmax of the
    teacher's affinity rows (at ``teacher_scale``, default ``scale``) and log Q the student's:

        ½·[SoftCE(A^S_i2t[i], P_i2t[i]) + SoftCE(A^S_t2i[i], P_t2i[i])],
        SoftCE(a, p) = −Σ_j p_j log softmax(a)_j.

    The student's and teacher's embedding widths may differ; only the B×B affinities meet. The
    minimum over the student, reached when its rows equal the teacher's (identical towers), is
    the mean entropy of the teacher's two rows, not zero: `affinity_excess` subtracts it. The
    teacher's side is detached."""
    check_reduction(reduction)
    _check_pairs(student_image, student_text, teacher_image, teacher_text)
    t_scale = float(scale if teacher_scale is None else teacher_scale)
    s_i2t, s_t2i = affinities(student_image, student_text, float(scale))
    t_i2t, t_t2i = affinities(teacher_image.detach(), teacher_text.detach(), t_scale)
    per_pair = 0.5 * sum(-(F.softmax(t, dim=1) * F.log_softmax(s, dim=1)).sum(1)
                         for s, t in ((s_i2t, t_i2t), (s_t2i, t_t2i)))
    return reduce(per_pair, reduction)


affinity_soft_ce.batch_level = True


def affinity_entropy(teacher_image: torch.Tensor, teacher_text: torch.Tensor,
                     scale: Annotated[float, Gt(0)] = 50.0, reduction: str = "mean") -> torch.Tensor:
    """Per pair, ½·[H(P_i2t[i]) + H(P_t2i[i])]: the floor of `affinity_soft_ce` for this teacher."""
    check_reduction(reduction)
    _check_pairs(teacher_image, teacher_text)
    rows = affinities(teacher_image.detach(), teacher_text.detach(), float(scale))
    per_pair = 0.5 * sum(-(F.softmax(a, dim=1) * F.log_softmax(a, dim=1)).sum(1) for a in rows)
    return reduce(per_pair, reduction)


def affinity_excess(student_image, student_text, teacher_image, teacher_text,
                    scale: Annotated[float, Gt(0)] = 50.0, reduction: str = "mean") -> torch.Tensor:
    """`affinity_soft_ce` minus its floor `affinity_entropy`: per pair the mean KL(P ‖ Q) of the
    two directions, ≥ 0, and 0 exactly when the student's affinity rows match the teacher's."""
    ce = affinity_soft_ce(student_image, student_text, teacher_image, teacher_text, scale, reduction="none")
    return reduce(ce - affinity_entropy(teacher_image, teacher_text, scale, reduction="none"), reduction)


def embedding_mse(student: torch.Tensor, teacher: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Per sample Σ_d (s_d − t_d)² of normalised embeddings of one width (= 2 − 2·cos): the
    per-modality feature-distillation baseline; the teacher's side is detached."""
    check_reduction(reduction)
    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(f"embedding_mse needs (B, D) embeddings of one shape, got {tuple(student.shape)} "
                         f"and {tuple(teacher.shape)}")
    return reduce(((student - teacher.detach()) ** 2).sum(1), reduction)
