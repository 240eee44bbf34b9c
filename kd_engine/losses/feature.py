"""Feature-based distillation losses: attention transfer and FitNets hints."""

from __future__ import annotations

from typing import Annotated, Callable, Optional

from annotated_types import Gt
import torch
import torch.nn.functional as F

from ._reduce import check_reduction, reduce
from kd_engine.losses.term_registry import term


def _attention_map(feature: torch.Tensor, p: float) -> torch.Tensor:
    """(B, C, *spatial) -> (B, positions): channel mean of f.pow(p), L2-normalised per sample."""
    return F.normalize(feature.pow(p).mean(dim=1).flatten(1), dim=1)


@term("attention_transfer", "features")
def attention_transfer(student_feature, teacher_feature, p: Annotated[float, Gt(0)] = 2,
                       reduction: str = "mean"):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017), in mdistiller's form.

    at(f) = normalise(f.pow(p).mean over channels, flattened over positions). Per sample: mean
    over positions of (at(s) - at(t))². Channel counts may differ, spatial sizes may not.
    """
    check_reduction(reduction)
    s_shape, t_shape = tuple(student_feature.shape), tuple(teacher_feature.shape)
    if (student_feature.dim() < 3 or student_feature.dim() != teacher_feature.dim()
            or s_shape[0] != t_shape[0] or s_shape[2:] != t_shape[2:]):
        raise ValueError(
            "attention_transfer needs (B, C, H, W) features with matching batch and spatial "
            f"sizes; got student {s_shape} and teacher {t_shape}"
        )
    diff = _attention_map(student_feature, p) - _attention_map(teacher_feature.detach(), p)
    return reduce(diff.pow(2).mean(dim=1), reduction)


@term("fitnet", "adapted_features")
def fitnet(student_feature, teacher_feature,
           adapter: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
           reduction: str = "mean"):
    """FitNets hint loss (Romero et al., ICLR 2015).

    Per sample: mean over all elements of (adapter(s) - t)². ``adapter`` (e.g. a 1x1 conv
    regressor) maps student features to the teacher's shape; None means identity.
    """
    check_reduction(reduction)
    mapped = student_feature if adapter is None else adapter(student_feature)
    target = teacher_feature.detach()
    if mapped.shape != target.shape:
        what = "student" if adapter is None else "adapted student"
        raise ValueError(
            f"fitnet needs matching shapes; got {what} {tuple(mapped.shape)} "
            f"and teacher {tuple(target.shape)}"
        )
    return reduce((mapped - target).pow(2).flatten(1).mean(dim=1), reduction)


attention_transfer.batch_level = False
fitnet.batch_level = False
