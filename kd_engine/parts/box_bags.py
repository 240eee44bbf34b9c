"""Proposal bags around inaccurate boxes, negatives away from them, box deltas, and the top-k
weighted box merge: the parts a box-refinement method (SSD-Det) builds pseudo boxes from.

A *bag* is a set of proposals around one annotated box b̃: the box scaled (each side by a ratio
in [scale_min, scale_max]) and moved (its centre by up to ``jitter`` × its side), keeping only
proposals with IoU(p, b̃) ≥ ``min_iou``. Multiple-instance learning scores the proposals of a bag
and a pseudo box is merged from the best ones:

    b* = Σ_{p ∈ top-k(w)} w_p · p / Σ_{p ∈ top-k(w)} w_p.

Deltas use torchvision's Faster R-CNN box coder with weights (10, 10, 5, 5), i.e. the coder
standard deviations (0.1, 0.1, 0.2, 0.2) the method's configuration uses.
"""
from __future__ import annotations

import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import box_iou

BOX_CODER = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))


def encode(proposals: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Deltas (..., 4) that move each proposal onto its target box (same leading shape)."""
    shape = proposals.shape
    return BOX_CODER.encode_single(targets.reshape(-1, 4), proposals.reshape(-1, 4)).reshape(shape)


def decode(proposals: torch.Tensor, deltas: torch.Tensor, size: float | None = None) -> torch.Tensor:
    """Boxes (..., 4) from proposals and deltas, clipped to [0, size] when a canvas size is given."""
    shape = proposals.shape
    boxes = BOX_CODER.decode_single(deltas.reshape(-1, 4), proposals.reshape(-1, 4)).reshape(shape)
    return boxes if size is None else boxes.clamp(0.0, float(size))


def proposal_bag(boxes: torch.Tensor, count: int = 10, scale: tuple[float, float] = (0.7, 1.3),
                 jitter: float = 0.2, min_iou: float = 0.3, generator: torch.Generator | None = None,
                 oversample: int = 4) -> torch.Tensor:
    """(M, count, 4) proposals around each of ``boxes`` (M, 4): ``oversample`` × count candidates
    are drawn, those with IoU ≥ min_iou to their box kept in the order drawn, and a bag short of
    ``count`` is filled up with the box itself (IoU 1)."""
    m = len(boxes)
    n = count * oversample
    centre = (boxes[:, None, :2] + boxes[:, None, 2:]) / 2
    wh = (boxes[:, None, 2:] - boxes[:, None, :2])
    u = torch.rand((m, n, 4), generator=generator, dtype=boxes.dtype)
    new_wh = wh * (scale[0] + (scale[1] - scale[0]) * u[..., 2:])
    new_centre = centre + wh * jitter * (2 * u[..., :2] - 1)
    cand = torch.cat([new_centre - new_wh / 2, new_centre + new_wh / 2], dim=-1)
    iou = box_iou(cand.reshape(-1, 4), boxes).reshape(m, n, m)[torch.arange(m), :, torch.arange(m)]
    valid = iou >= min_iou
    # valid candidates first, in the order drawn (a stable sort on ~valid)
    order = torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices[:, :count]
    bag = cand.gather(1, order[..., None].expand(-1, -1, 4))
    short = ~valid.gather(1, order)
    return torch.where(short[..., None], boxes[:, None, :].expand(-1, count, -1), bag)


def negative_boxes(boxes: torch.Tensor, owner: torch.Tensor, images: int, per_image: int, size: int,
                   side: tuple[float, float], max_iou: float = 0.3,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Background RoIs (R, 5) as (image index, x0, y0, x1, y1): up to ``per_image`` random boxes per
    image with sides uniform in ``side`` and IoU < max_iou to every box of that image (``boxes``
    (M, 4), ``owner`` (M,) their image index)."""
    n = per_image * 3
    u = torch.rand((images, n, 4), generator=generator)
    wh = side[0] + (side[1] - side[0]) * u[..., 2:]
    x0y0 = u[..., :2] * (size - wh)
    cand = torch.cat([x0y0, x0y0 + wh], dim=-1)
    out = []
    for i in range(images):
        own = boxes[owner == i]
        keep = box_iou(cand[i], own).max(1).values < max_iou if len(own) else torch.ones(n, dtype=torch.bool)
        chosen = cand[i][keep][:per_image]
        out.append(torch.cat([torch.full((len(chosen), 1), float(i)), chosen], 1))
    return torch.cat(out) if out else torch.zeros(0, 5)


def topk_weighted_merge(proposals: torch.Tensor, weights: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The merged box (M, 4) of each bag's ``k`` highest-weighted proposals (``proposals`` (M, P, 4),
    ``weights`` (M, P) ≥ 0), b* = Σ_top-k w_p p / Σ_top-k w_p, and the chosen indices (M, k). A
    bag whose top-k weights sum to zero takes the plain mean of its top-k."""
    k = min(int(k), proposals.shape[1])
    top_w, top_i = weights.topk(k, dim=1)
    chosen = proposals.gather(1, top_i[..., None].expand(-1, -1, 4))
    total = top_w.sum(1, keepdim=True)
    top_w = torch.where(total > 0, top_w, torch.ones_like(top_w))
    return (top_w[..., None] * chosen).sum(1) / top_w.sum(1, keepdim=True), top_i


def minmax_per_bag(values: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each row of ``values`` (M, P) rescaled to [0, 1] by its own min and max (a constant row
    becomes all ones, so it changes no weight)."""
    lo, hi = values.min(1, keepdim=True).values, values.max(1, keepdim=True).values
    span = hi - lo
    return torch.where(span > eps, (values - lo) / span.clamp_min(eps), torch.ones_like(values))


def paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of matching rows of ``a`` (..., 4) and ``b`` (..., 4) (broadcast), not all pairs."""
    lt, rb = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area = lambda x: (x[..., 2:] - x[..., :2]).clamp_min(0).prod(-1)  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp_min(1e-9)
