"""Distillation for dense detectors with per-class sigmoid heads (BCKD, ICCV 2023).

A dense detector scores every location and class with an independent sigmoid, trained against
heavy foreground imbalance. Softmax KD over the classes of one location throws away the absolute
scores that protocol depends on (a background location whose three classes all sit near 0 looks
uniform after a softmax). BCKD instead distils each (location, class) logit as its own binary
problem, weighted by how far the student is from the teacher there, and distils localisation
through the overlap of the decoded boxes at every location. Both functions return raw per-image
sums divided by an optional per-image ``normalizer`` (the detector divides by its number of
positive locations, counted over the batch; the method does that division).
"""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Ge
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss

from ._reduce import check_reduction, reduce
from kd_engine.losses.logit import kd
from kd_engine.losses.term_registry import term


def _per_image(values: Tensor, normalizer: Tensor | float | None) -> Tensor:
    """(B, ...) -> (B,) sums, divided by the per-image (or scalar) normalizer when given."""
    sums = values.flatten(1).sum(1)
    if normalizer is None:
        return sums
    return sums / torch.as_tensor(normalizer, dtype=sums.dtype, device=sums.device)


def discrepancy_weights(student_logits: Tensor, teacher_logits: Tensor,
                        beta: Annotated[float, Ge(0)] = 1.0) -> Tensor:
    """|σ(t) − σ(s)|^β per logit, detached: what BCKD's classification term weighs each
    (location, class) by, and (its max over classes, β = 1) what the box term weighs a location by."""
    diff = (torch.sigmoid(teacher_logits.detach().float()) - torch.sigmoid(student_logits.detach().float())).abs()
    return diff.pow(float(beta)) if beta != 1 else diff


@term("bckd_cls", "logits")
def binary_discrepancy_kd(student_logits, teacher_logits, beta: Annotated[float, Ge(0)] = 1.0,
                          normalizer: Tensor | float | None = None, reduction: str = "mean"):
    """BCKD's classification term: every logit distilled as an independent Bernoulli.

    Per image b, over all its locations and classes (inputs (B, ..., C), e.g. (B, N, C)):

        L_b = (1 / n_b) Σ_loc Σ_c BCE(σ(s), σ(t)) · |σ(t) − σ(s)|^β

    with BCE(q, p) = −p log q − (1 − p) log(1 − q), the teacher's probability as a soft target
    (its entropy is included, as the detector's own BCE would have it: identical logits give
    H(σ(t)) · 0 = 0 only through the weight, which vanishes for β > 0). The weight is detached,
    so the gradient is BCE's, σ(s) − σ(t), scaled by the discrepancy: locations and classes the
    student already matches stop counting, which is how the term copes with the thousands of easy
    background locations without a focal term. n_b is ``normalizer`` (1 when None).
    """
    check_reduction(reduction)
    if student_logits.shape != teacher_logits.shape or student_logits.dim() < 2:
        raise ValueError("student and teacher logits must have the same shape (B, ..., C); got student "
                         f"{tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)}")
    s, t = student_logits.float(), teacher_logits.detach().float()
    bce = F.binary_cross_entropy_with_logits(s, torch.sigmoid(t), reduction="none")
    weighted = bce * discrepancy_weights(s, t, beta) if beta else bce
    return reduce(_per_image(weighted, normalizer), reduction)


binary_discrepancy_kd.batch_level = False


def giou_box_kd(student_boxes: Tensor, teacher_boxes: Tensor, weights: Tensor,
                normalizer: Tensor | float | None = None, reduction: str = "mean") -> Tensor:
    """BCKD's localisation term: the student's decoded boxes pulled onto the teacher's.

    Per image b, over all N locations (boxes (B, N, 4) as x0, y0, x1, y1; weights (B, N)):

        L_b = (1 / n_b) Σ_loc w_loc · (1 − GIoU(b_S, sg(b_T)))

    Teacher boxes are detached (a target, never moved), and so are the weights (for BCKD
    w_loc = max_c |σ(t_c) − σ(s_c)|: locations where the two disagree about *what* is there
    are also where *where* matters). Because GIoU is scale-free, a location far from any object
    still contributes a bounded term, which is why BCKD can use every location, not only the
    positives. n_b is ``normalizer`` (1 when None).
    """
    check_reduction(reduction)
    if (student_boxes.shape != teacher_boxes.shape or student_boxes.dim() != 3
            or student_boxes.shape[-1] != 4 or weights.shape != student_boxes.shape[:2]):
        raise ValueError("boxes must both be (B, N, 4) and weights (B, N); got student "
                         f"{tuple(student_boxes.shape)}, teacher {tuple(teacher_boxes.shape)}, "
                         f"weights {tuple(weights.shape)}")
    s, t = student_boxes.float(), teacher_boxes.detach().float()
    loss = generalized_box_iou_loss(s.reshape(-1, 4), t.reshape(-1, 4), reduction="none").view(s.shape[:2])
    return reduce(_per_image(loss * weights.detach().float(), normalizer), reduction)


def softmax_kd_dense(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0,
                     normalizer: Tensor | float | None = None, reduction: str = "mean") -> Tensor:
    """The inconsistent baseline: Hinton KD over the classes of each location of a sigmoid head,
    T² · KL(softmax(t/T) ‖ softmax(s/T)) summed over (B, N, C) locations, per image / n_b.
    It is the engine's ``kd`` applied location by location."""
    check_reduction(reduction)
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 3:
        raise ValueError("student and teacher logits must both be (B, N, C); got student "
                         f"{tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)}")
    B, N, C = student_logits.shape
    per_loc = kd(student_logits.float().reshape(B * N, C), teacher_logits.float().reshape(B * N, C),
                 temperature=temperature, reduction="none").view(B, N)
    return reduce(_per_image(per_loc, normalizer), reduction)


__all__ = ["binary_discrepancy_kd", "discrepancy_weights", "giou_box_kd", "softmax_kd_dense"]
