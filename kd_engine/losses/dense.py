"""Distillation losses for dense prediction: logits (or maps) of shape (B, C, H, W).

Both reduce over pixels inside each image, so ``reduction="none"`` gives one value per image,
the unit the run store records and a weighting strategy weights.
"""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Gt

from ._reduce import check_reduction, reduce
from .logit import _cs_from_probs, _kl_rows
from kd_engine.losses.term_registry import term


def _check_maps(student: torch.Tensor, teacher: torch.Tensor, what: str = "logits") -> None:
    if student.dim() != 4 or student.shape != teacher.shape:
        raise ValueError(f"student and teacher {what} must both have shape (B, C, H, W); got student "
                         f"{tuple(student.shape)} and teacher {tuple(teacher.shape)}")


def pixel_kl_map(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                 temperature: Annotated[float, Gt(0)] = 1.0) -> torch.Tensor:
    """(B, H, W) map of KL(softmax(t/T) ‖ softmax(s/T)) over classes at every pixel: where, in an
    image, the student's per-pixel prediction departs from the teacher's (no T² factor)."""
    _check_maps(student_logits, teacher_logits)
    T = float(temperature)
    log_q = F.log_softmax(student_logits / T, dim=1)
    log_p = F.log_softmax(teacher_logits.detach() / T, dim=1)
    return _kl_rows(log_q, log_p)


@term("pixel_kd", "logits")
def pixel_kd(student_logits, teacher_logits, temperature: Annotated[float, Gt(0)] = 4.0, reduction: str = "mean"):
    """Pixel-wise KD: Hinton's KD applied at every pixel of a segmentation map.

    Per image: T² · (1 / HW) Σ_pixels KL(softmax(t/T) ‖ softmax(s/T)), the KL summed over the
    C classes. Averaging over pixels (not summing) keeps the scale independent of the image size;
    with H = W = 1 it is exactly the classification ``kd``.
    """
    check_reduction(reduction)
    per_pixel = pixel_kl_map(student_logits, teacher_logits, temperature)
    T = float(temperature)
    return reduce(per_pixel.flatten(1).mean(dim=1) * T * T, reduction)


@term("channel_kd", "logits")
def channel_kd(student_logits, teacher_logits, temperature: Annotated[float, Gt(0)] = 4.0, reduction: str = "mean"):
    """Channel-wise distillation (Shu et al., ICCV 2021, "Channel-wise Knowledge Distillation for
    Dense Prediction").

    Each channel's map is turned into a distribution over the H·W positions, φ(y_c) =
    softmax(y_c / T) over space, and the student matches the teacher channel by channel. Per image:
    T² · (1 / C) Σ_c KL(φ(t_c) ‖ φ(s_c)). It asks where each class (channel) is most active rather
    than which class wins at each pixel, so background-dominated pixels weigh less than in
    ``pixel_kd``. With H = W = 1 every channel's distribution is a single point and the loss is 0.
    """
    check_reduction(reduction)
    _check_maps(student_logits, teacher_logits)
    T = float(temperature)
    log_q = F.log_softmax(student_logits.flatten(2) / T, dim=2)  # (B, C, HW)
    log_p = F.log_softmax(teacher_logits.detach().flatten(2) / T, dim=2)
    per_channel = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=2)  # (B, C)
    return reduce(per_channel.mean(dim=1) * T * T, reduction)


def pixel_cs_map(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                 temperature: Annotated[float, Gt(0)] = 1.0) -> torch.Tensor:
    """(B, H, W) map of the Cauchy-Schwarz divergence between softmax(t/T) and softmax(s/T) over
    the classes at every pixel."""
    _check_maps(student_logits, teacher_logits)
    T = float(temperature)
    q = F.softmax(student_logits / T, dim=1)
    p = F.softmax(teacher_logits.detach() / T, dim=1)
    return _cs_from_probs(p, q, dim=1)


@term("pixel_cs", "logits")
def pixel_cs(student_logits, teacher_logits, temperature: Annotated[float, Gt(0)] = 1.0, reduction: str = "mean"):
    """Cauchy-Schwarz divergence per pixel, over classes: the classification ``cs`` at every pixel.

    Per image: (1 / HW) Σ_pixels D_CS(softmax(t/T), softmax(s/T)), with
    D_CS(p, q) = −log Σ_c p_c q_c + ½ log Σ_c p_c² + ½ log Σ_c q_c² (ε = 1e-8 inside the logs).
    D_CS ≥ 0, symmetric, 0 iff p = q, and unchanged when p or q is rescaled. No T² factor (as
    for ``cs``): Hinton's T² compensates KL's gradients shrinking like 1/T², a derivation that
    does not carry over to D_CS, so the loss is used as written and the temperature grid of the
    multi-task notebook shows what T does to it. With H = W = 1 it is exactly ``cs``.
    """
    check_reduction(reduction)
    return reduce(pixel_cs_map(student_logits, teacher_logits, temperature).flatten(1).mean(dim=1), reduction)


@term("channel_cs", "logits")
def channel_cs(student_logits, teacher_logits, temperature: Annotated[float, Gt(0)] = 1.0, reduction: str = "mean"):
    """Cauchy-Schwarz divergence per channel, over the H·W positions (the spatial axis).

    Each channel's map becomes a distribution over positions, φ(y_c) = softmax(y_c / T) over
    space (as in ``channel_kd``), and per image the loss is (1 / C) Σ_c D_CS(φ(t_c), φ(s_c)).
    This is how a continuous map (depth, edge logits, features) enters a CS loss: D_CS ignores the
    scale of its arguments, so raw regression values would leave it blind to their magnitude;
    the softmax over space turns each map into "where it is high". With H = W = 1 the loss is 0.
    """
    check_reduction(reduction)
    _check_maps(student_logits, teacher_logits)
    T = float(temperature)
    q = F.softmax(student_logits.flatten(2) / T, dim=2)  # (B, C, HW)
    p = F.softmax(teacher_logits.detach().flatten(2) / T, dim=2)
    return reduce(_cs_from_probs(p, q, dim=2).mean(dim=1), reduction)


for _fn in (pixel_kd, channel_kd, pixel_cs, channel_cs):
    _fn.batch_level = False
    _fn.dense = True  # takes (B, C, H, W) logits: what a dense run's distiller accepts as a logit term
