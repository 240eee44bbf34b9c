"""Losses of box refinement from inaccurate boxes (SSD-Det): the MIL bag loss, the proposal-delta
L1 of spatial self-distillation and the IoU-confidence regression. One "sample" is one object
(one annotated box and its bag of P proposals); ``reduction="none"`` gives one value per object.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._reduce import reduce


def mil_scores(cls_logits: torch.Tensor, ins_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities c (M, P, K+1; softmax over classes, the last one background) and
    instance scores s (M, P; softmax over the P proposals of each bag, not over classes)."""
    return cls_logits.softmax(-1), ins_logits.softmax(1)


def mil_bag_loss(cls_logits: torch.Tensor, ins_logits: torch.Tensor, labels: torch.Tensor,
                 reduction: str = "mean") -> torch.Tensor:
    """Multiple-instance bag loss. Per object with label y, bag score S_k = Σ_p c_p[k]·s_p for the
    K foreground classes k (c, s from `mil_scores`), and the loss is the binary cross-entropy
    of S against the one-hot y, summed over the K classes:
    −Σ_k [1(k=y)·log S_k + 1(k≠y)·log(1 − S_k)].

    ``cls_logits`` (M, P, K+1), ``ins_logits`` (M, P), ``labels`` (M,) in [0, K)."""
    if ins_logits.dim() != 2 or cls_logits.dim() != 3 or cls_logits.shape[:2] != ins_logits.shape \
            or labels.shape != ins_logits.shape[:1]:
        raise ValueError("expected cls_logits (M, P, K+1), ins_logits (M, P) and labels (M,); got "
                         f"{tuple(cls_logits.shape)}, {tuple(ins_logits.shape)} and {tuple(labels.shape)}")
    c, s = mil_scores(cls_logits, ins_logits)
    bag = (c[..., :-1] * s[..., None]).sum(1).clamp(1e-6, 1 - 1e-6)  # (M, K)
    target = F.one_hot(labels, bag.shape[1]).to(bag.dtype)
    return reduce(F.binary_cross_entropy(bag, target, reduction="none").sum(1), reduction)


def delta_l1(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Spatial self-distillation's regression loss: mean over the P proposals and 4 coordinates
    of |Δ(p) − enc(p, b̃)| per object (``pred``, ``target``: (M, P, 4) deltas; the target is
    detached)."""
    if pred.dim() != 3 or pred.shape != target.shape or pred.shape[-1] != 4:
        raise ValueError(f"pred and target must both be (M, P, 4); got {tuple(pred.shape)} and {tuple(target.shape)}")
    return reduce((pred - target.detach()).abs().mean((1, 2)), reduction)


def iou_confidence_loss(pred: torch.Tensor, iou: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The IoU head's regression: SmoothL1 (β = 1) between its output and (IoU − 0.5)/0.5 (IoU of
    each proposal with the object's pseudo box; detached), mean over the P proposals per object.
    ``pred``, ``iou``: (M, P)."""
    if pred.dim() != 2 or pred.shape != iou.shape:
        raise ValueError(f"pred and iou must both be (M, P); got {tuple(pred.shape)} and {tuple(iou.shape)}")
    target = (iou.detach() - 0.5) / 0.5
    return reduce(F.smooth_l1_loss(pred, target, reduction="none", beta=1.0).mean(1), reduction)
