"""Cell masks on a bird's-eye-view (BEV) grid, built from rotated box footprints.

BEV distillers decide *where* a student imitates its teacher from the ground-truth boxes: the
cells an object covers (foreground), the cells it does not (background), and how much each cell
counts. This module holds those decisions as plain functions so that every BEV method (DistillBEV,
RDD, ...) derives them the same way.

Boxes are rows ``[cx, cy, length, width, yaw]`` in cell units (`kd_engine.data.bev_boxes`, which
the scene generators share).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from kd_engine.data.bev_boxes import BOX_FIELDS, box_cells, check_boxes, metric_to_cells

__all__ = ["BOX_FIELDS", "box_cells", "component_weights", "false_positive_regions", "footprint_mask", "metric_to_cells",
           "scale_mask", "scene_masks"]


def footprint_mask(boxes, height: int, width: int) -> torch.Tensor:
    """(H, W) bool: the union of the boxes' footprints (the foreground cells)."""
    return box_cells(boxes, height, width).any(0)


def scale_mask(boxes, height: int, width: int, cell_area: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(foreground (H, W) bool, scale (H, W) float) of one scene.

    Each foreground cell weighs √(cell_area / (length·width)) of the box covering it, so a small
    object's few cells count more each than a large object's many, without the small object
    dominating in total (its weight summed over its cells grows as √(area)). Where boxes overlap
    the larger weight wins. Every background cell weighs 1/N_bg, so the background as a whole
    weighs 1 whatever its size; a scene without background cells has no background weight.
    The two are combined into one map by taking the maximum per cell (they never overlap).
    """
    boxes = check_boxes(boxes)
    cells = box_cells(boxes, height, width)
    fg = cells.any(0)
    area = (boxes[:, 2] * boxes[:, 3]).clamp_min(1e-12)
    per_box = torch.sqrt(cell_area / area)[:, None, None] * cells
    fg_scale = per_box.max(0).values if len(boxes) else torch.zeros(height, width)
    n_bg = int((~fg).sum())
    bg_scale = (~fg).float() / max(n_bg, 1)
    return fg, torch.maximum(fg_scale, bg_scale)


def component_weights(region: np.ndarray) -> np.ndarray:
    """(H, W) float: each 4-connected component of the bool map ``region`` gets weight
    1/|component| on its cells (so every component weighs 1 in total), 0 elsewhere."""
    labels, count = ndimage.label(np.asarray(region, dtype=bool))
    if count == 0:
        return np.zeros(labels.shape, dtype=np.float32)
    sizes = np.bincount(labels.ravel())
    weights = np.zeros(count + 1, dtype=np.float32)
    weights[1:] = 1.0 / sizes[1:]
    return weights[labels]


def false_positive_regions(gt_heatmap: torch.Tensor, heatmaps: list[torch.Tensor], foreground: torch.Tensor,
                           gt_below: float = 0.1, score_above: float = 0.3) -> torch.Tensor:
    """(B, H, W) weights of the false-positive regions of a batch.

    A cell is a false positive when the ground-truth heatmap there (max over classes) is below
    ``gt_below``, it is outside every box footprint, and any of the given predicted heatmaps
    (teacher's, student's; max over classes, after the sigmoid) exceeds ``score_above``. Each
    connected component of such cells is weighted 1/|component| (`component_weights`).
    Inputs: ``gt_heatmap`` (B, K, H, W), each of ``heatmaps`` (B, K, H, W), ``foreground`` (B, H, W).
    """
    low = gt_heatmap.detach().amax(1) < gt_below
    high = torch.zeros_like(low)
    for heat in heatmaps:
        high |= heat.detach().amax(1) > score_above
    region = (low & high & ~foreground.bool()).cpu().numpy()
    out = np.stack([component_weights(r) for r in region]) if len(region) else np.zeros(region.shape, np.float32)
    return torch.as_tensor(out, device=gt_heatmap.device)


def scene_masks(boxes: list, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(foreground (B, H, W) bool, scale (B, H, W)) of a batch of scenes, each given as its
    cell-unit boxes on the (H, W) map (`scale_mask` per scene, cell area 1)."""
    pairs = [scale_mask(b, height, width) for b in boxes]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
