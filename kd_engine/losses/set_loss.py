"""A Hungarian set loss between a fixed set of query predictions and a variable set of boxes
(DETR's, Carion et al. 2020), which UniKD's query extractor is trained and queried with.

Each image has Q predictions (class logits over K + 1 classes, index 0 = "no object", the
background index torchvision's detectors use too; boxes as normalised xyxy in [0, 1]) and
G ≤ Q target boxes with labels in 1..K. The predictions are matched one-to-one to the targets
by minimising

    C[q, g] = −w_cls · p_q(label_g) + w_l1 · ‖b_q − b_g‖₁ − w_giou · GIoU(b_q, b_g)

(SciPy's ``linear_sum_assignment``). Given the match σ, the loss of one image is

    L = CE_w(logits, y) + (w_l1 · Σ_g ‖b_σ(g) − b_g‖₁ + w_giou · Σ_g (1 − GIoU(b_σ(g), b_g))) / max(G, 1)

where y gives each matched query its target's label and every other query "no object", and
CE_w is the cross-entropy averaged with weight ``no_object_weight`` on the unmatched queries
(the weighted mean Σ w_q CE_q / Σ w_q, as DETR down-weights the many empty queries). Matching
needs no gradient; the loss is differentiable in the logits and boxes.
"""
from __future__ import annotations

from typing import Annotated, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from annotated_types import Ge
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import generalized_box_iou

from ._reduce import check_reduction, reduce

Weight = Annotated[float, Ge(0)]


def _check(logits: Tensor, boxes: Tensor, targets: Sequence[dict]) -> None:
    if logits.dim() != 3 or boxes.dim() != 3 or boxes.shape[:2] != logits.shape[:2] or boxes.shape[2] != 4:
        raise ValueError(f"logits must be (B, Q, K+1) and boxes (B, Q, 4); got {tuple(logits.shape)} "
                         f"and {tuple(boxes.shape)}")
    if len(targets) != logits.shape[0]:
        raise ValueError(f"one target dict per image: {len(targets)} for a batch of {logits.shape[0]}")
    for t in targets:
        if t["boxes"].shape[0] > logits.shape[1]:
            raise ValueError(f"{t['boxes'].shape[0]} target boxes exceed the {logits.shape[1]} queries")


def match_cost(logits: Tensor, boxes: Tensor, labels: Tensor, target_boxes: Tensor, class_weight: Weight = 1.0,
               l1_weight: Weight = 5.0, giou_weight: Weight = 2.0) -> Tensor:
    """The (Q, G) matching cost of one image (see the module doc)."""
    prob = logits.float().softmax(-1)[:, labels.long()]
    l1 = torch.cdist(boxes.float(), target_boxes.float(), p=1)
    giou = generalized_box_iou(boxes.float(), target_boxes.float())
    return -class_weight * prob + l1_weight * l1 - giou_weight * giou


@torch.no_grad()
def hungarian_match(logits: Tensor, boxes: Tensor, targets: Sequence[dict], class_weight: Weight = 1.0,
                    l1_weight: Weight = 5.0, giou_weight: Weight = 2.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image, (query indices, target indices) of the minimum-cost one-to-one match, ordered
    by target index (a target with no query is impossible: G ≤ Q is required)."""
    _check(logits, boxes, targets)
    out = []
    for b, t in enumerate(targets):
        if t["boxes"].shape[0] == 0:
            out.append((np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)))
            continue
        cost = match_cost(logits[b], boxes[b], t["labels"], t["boxes"], class_weight, l1_weight, giou_weight)
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        order = np.argsort(cols)
        out.append((rows[order].astype(np.int64), cols[order].astype(np.int64)))
    return out


def set_loss_parts(logits: Tensor, boxes: Tensor, targets: Sequence[dict],
                   matches: Sequence[tuple[np.ndarray, np.ndarray]] | None = None, class_weight: Weight = 1.0,
                   l1_weight: Weight = 5.0, giou_weight: Weight = 2.0,
                   no_object_weight: Weight = 0.1) -> dict[str, Tensor]:
    """Per-image (B,) ``cls``, ``l1`` and ``giou`` parts (the latter two already weighted) and
    their sum ``total``; the Hungarian match is computed when ``matches`` is None."""
    _check(logits, boxes, targets)
    if matches is None:
        matches = hungarian_match(logits, boxes, targets, class_weight, l1_weight, giou_weight)
    B, Q, _ = logits.shape
    cls, l1, giou = [], [], []
    for b, (t, (rows, cols)) in enumerate(zip(targets, matches)):
        rows_t, cols_t = torch.as_tensor(rows, device=logits.device), torch.as_tensor(cols, device=logits.device)
        y = torch.zeros(Q, dtype=torch.long, device=logits.device)
        y[rows_t] = t["labels"].long().to(logits.device)[cols_t]
        w = torch.full((Q,), float(no_object_weight), device=logits.device)
        w[rows_t] = 1.0
        ce = F.cross_entropy(logits[b].float(), y, reduction="none")
        cls.append(class_weight * (w * ce).sum() / w.sum().clamp_min(1e-12))
        n = max(len(rows), 1)
        pred, true = boxes[b].float()[rows_t], t["boxes"].float().to(boxes.device)[cols_t]
        l1.append(l1_weight * (pred - true).abs().sum() / n)
        giou.append(giou_weight * (1 - torch.diag(generalized_box_iou(pred, true))).sum() / n
                    if len(rows) else pred.sum() * 0)
    parts = {"cls": torch.stack(cls), "l1": torch.stack(l1), "giou": torch.stack(giou)}
    parts["total"] = parts["cls"] + parts["l1"] + parts["giou"]
    return parts


def set_loss(logits: Tensor, boxes: Tensor, targets: Sequence[dict],
             matches: Sequence[tuple[np.ndarray, np.ndarray]] | None = None, class_weight: Weight = 1.0,
             l1_weight: Weight = 5.0, giou_weight: Weight = 2.0, no_object_weight: Weight = 0.1,
             reduction: str = "mean") -> Tensor:
    """The Hungarian set loss (module doc): one value per image with ``reduction="none"``."""
    check_reduction(reduction)
    parts = set_loss_parts(logits, boxes, targets, matches, class_weight, l1_weight, giou_weight, no_object_weight)
    return reduce(parts["total"], reduction)


__all__ = ["hungarian_match", "match_cost", "set_loss", "set_loss_parts"]
