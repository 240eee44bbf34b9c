"""Rotated boxes on a bird's-eye-view (BEV) grid: which cells a box covers.

Both the scene generators (to render occupancy and keep objects apart) and the BEV distillers
(to build foreground masks, `kd_engine.parts.bev_masks`) need the same answer, so it lives here,
in the data layer that both may import.

Conventions: a box is a row ``[cx, cy, length, width, yaw]`` in cell units, with x along the
columns and y along the rows of an (H, W) grid; cell (i, j) has its centre at (j + 0.5, i + 0.5);
``yaw`` (radians, from +x toward +y) turns the length axis. Height is ignored: a footprint is the
set of cells whose centre lies inside the rotated rectangle (edges included).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

BOX_FIELDS = ("cx", "cy", "length", "width", "yaw")


def check_boxes(boxes) -> torch.Tensor:
    """``boxes`` as a float (N, 5) tensor; raises ValueError naming the expected fields."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    if boxes.numel() == 0:
        return boxes.reshape(0, len(BOX_FIELDS))
    if boxes.dim() != 2 or boxes.shape[1] != len(BOX_FIELDS):
        raise ValueError(f"boxes must have shape (N, {len(BOX_FIELDS)}) = {list(BOX_FIELDS)}, "
                         f"got {tuple(boxes.shape)}")
    return boxes


@lru_cache(maxsize=8)
def cell_centres(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) of every cell centre of an (H, W) grid (read-only, cached)."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    ys.flags.writeable = xs.flags.writeable = False
    return ys, xs


def box_cells(boxes, height: int, width: int) -> torch.Tensor:
    """(N, H, W) bool: for each box, the cells whose centre lies inside its rotated footprint,
    and the cell that holds the box's own centre (so a box smaller than a cell, on a coarse
    feature map, still has one cell).

    A cell centre p is inside when its offset from the box centre, turned by −yaw into the
    box's frame, satisfies |u| ≤ length/2 and |v| ≤ width/2 (a small tolerance keeps centres on
    an edge inside despite rounding of cos/sin).
    """
    boxes = check_boxes(boxes).numpy().astype(np.float64)
    ys, xs = cell_centres(height, width)
    cx, cy, length, wid, yaw = (boxes[:, k, None, None] for k in range(5))
    dx, dy = xs - cx, ys - cy
    cos, sin = np.cos(yaw), np.sin(yaw)
    u = dx * cos + dy * sin
    v = -dx * sin + dy * cos
    eps = 1e-4
    inside = (np.abs(u) <= length / 2 + eps) & (np.abs(v) <= wid / 2 + eps)
    holds_centre = (np.floor(cx) == xs - 0.5) & (np.floor(cy) == ys - 0.5)
    return torch.from_numpy(inside | holds_centre)


def metric_to_cells(boxes, cell: float, side: int) -> np.ndarray:
    """(M, 5) cell-unit boxes ``[cx, cy, length, width, yaw]`` on a ``side`` × ``side`` map of
    ``cell``-metre cells, from metric rows (class, x, y, length, width, yaw) whose origin is the
    map centre (`kd_engine.data.bev`'s scenes)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 6)
    return np.column_stack([boxes[:, 1] / cell + side / 2, boxes[:, 2] / cell + side / 2,
                            boxes[:, 3] / cell, boxes[:, 4] / cell, boxes[:, 5]]).astype(np.float32)
