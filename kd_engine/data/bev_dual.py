"""Dual-modality BEV scenes: one scene seen by a "LiDAR" and by a "camera" (for DistillBEV).

A scene is 2–6 boxes on a 32×32 bird's-eye-view grid, of two classes: ``small`` (length 2–4
cells, width 2) and ``large`` (length 5–8, width 3), each in one of 4 orientations (0°, 45°, 90°,
135°), placed apart from each other and from the sensor at the grid centre.

- **LiDAR view** (the teacher's input): the exact occupancy of the footprints and the object
  height per cell, with 2% of the cells dropped (both channels zero), as a range sensor sees
  the geometry directly.
- **Camera view** (the student's input): a stand-in for lifting image features to BEV with a
  *fixed depth distribution* (neither exact known depth nor a learned depth network). A camera
  at the grid centre knows each object's direction exactly but not its range, so the occupancy
  along each ray of azimuth is spread over range by a Gaussian whose width grows with range
  (σ = 0.5 + 0.15·r cells): objects become radial streaks, sharper when near. Each camera image
  column (one of 64 azimuth sectors) is dropped with probability 0.3, and Gaussian noise (σ 0.1)
  is added. No occlusion is modelled in either view. This is a simple, honest stand-in for
  depth ambiguity, not an image renderer.

Dataset ``bev_dual`` stacks the two views as input channels ``[lidar_occupancy, lidar_height,
camera]``; the teacher reads channels 0–1 and the student channel 2 (the model's ``in_channels``
parameter). Scenes, targets and splits are `kd_engine.data.bev`'s (its ``generate`` with this
module's scene maker and 2 classes), so the ``bev`` task and its metrics apply unchanged; the
views are registered in ``BEV_INPUTS`` as ``lidar_exact`` and ``camera`` and so also work on the
ray-cast ``bev_scenes``. A bundle is built once per process for its parameters and seed.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache

import numpy as np
from scipy import ndimage

from kd_engine.data.base import DataBundle, cfg_get
from kd_engine.data.bev import BEV_INPUTS, Scene, generate
from kd_engine.data.bev_boxes import box_cells, cell_centres, metric_to_cells
from kd_engine.data.registry import DATASETS
from kd_engine.params import check, reject_unknown

CLASS_NAMES = ("small", "large")
ORIENTATIONS = (0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4)
SIZES = {0: ((2, 4), 2.0), 1: ((5, 8), 3.0)}  # class: ((min, max) length, width), in cells
HEIGHTS = {0: (0.3, 0.6), 1: (0.6, 1.0)}  # object height (fraction of the height range)
CHANNELS = ("lidar_occupancy", "lidar_height", "camera")
LIDAR_CHANNELS, CAMERA_CHANNELS = [0, 1], [2]


def sample_scene(rng: np.random.Generator, grid: int = 32, boxes: tuple[int, int] = (2, 6),
                 sensor_clearance: float = 3.0, tries: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes (N, 5) [cx, cy, length, width, yaw], labels (N,), heights (N,)) of one scene.

    The count is drawn in ``boxes`` (inclusive), classes with equal odds; a box is redrawn when
    its footprint, grown by one cell, touches another box, leaves the grid, or comes within
    ``sensor_clearance`` cells of the sensor. A scene may hold fewer boxes when no place is left.
    """
    count = int(rng.integers(boxes[0], boxes[1] + 1))
    placed, labels, heights = [], [], []
    blocked = np.zeros((grid, grid), bool)  # the placed footprints grown by one cell
    centre = grid / 2
    for _ in range(count):
        for _ in range(tries):
            label = int(rng.integers(0, 2))
            (lo, hi), width = SIZES[label]
            length = float(rng.integers(lo, hi + 1))
            yaw = ORIENTATIONS[int(rng.integers(0, len(ORIENTATIONS)))]
            reach = 0.5 * math.hypot(length, width) + 1
            cx, cy = rng.uniform(reach, grid - reach, size=2)
            if math.hypot(cx - centre, cy - centre) < sensor_clearance + reach:
                continue
            cells = box_cells([[cx, cy, length, width, yaw]], grid, grid)[0].numpy()
            if not cells.any() or (cells & blocked).any():
                continue
            blocked |= ndimage.binary_dilation(cells)
            placed.append([cx, cy, length, width, yaw])
            labels.append(label)
            heights.append(rng.uniform(*HEIGHTS[label]))
            break
    return (np.asarray(placed, np.float32).reshape(-1, 5), np.asarray(labels, np.int64),
            np.asarray(heights, np.float32))


def lidar_view(boxes: np.ndarray, heights: np.ndarray, grid: int, rng: np.random.Generator,
               dropout: float = 0.02) -> np.ndarray:
    """(2, H, W): exact occupancy and per-cell height (max over boxes), with ``dropout`` of the
    cells zeroed in both channels."""
    cells = box_cells(boxes, grid, grid).numpy()
    occupancy = cells.any(0).astype(np.float32)
    height = (cells * np.asarray(heights, np.float32)[:, None, None]).max(0) if len(boxes) else occupancy * 0
    keep = rng.random((grid, grid)) >= dropout
    return np.stack([occupancy, height]) * keep


@lru_cache(maxsize=4)
def polar_coordinates(grid: int) -> tuple[np.ndarray, np.ndarray]:
    """(range, azimuth in [0, 2π)) of every cell centre seen from the sensor at the grid centre."""
    ys, xs = cell_centres(grid, grid)
    dx, dy = xs - grid / 2, ys - grid / 2
    return np.hypot(dx, dy), np.mod(np.arctan2(dy, dx), 2 * np.pi)


def depth_smear(occupancy: np.ndarray, azimuth_bins: int = 128, range_step: float = 0.5,
                sigma0: float = 0.5, sigma_slope: float = 0.15) -> np.ndarray:
    """(H, W): ``occupancy`` lifted through a fixed depth distribution along each ray.

    The grid is resampled into (azimuth, range) bins (max of the cells in each bin); along each
    azimuth the profile is spread by Gaussians of width σ(r) = sigma0 + sigma_slope·r (each
    source bin's Gaussian normalised to peak 1, so a near object keeps a sharp, bright streak)
    and the result read back at every cell's own bin. Cells in other azimuths receive nothing.
    """
    grid = occupancy.shape[0]
    rng_, az = polar_coordinates(grid)
    a_bin = np.minimum((az / (2 * np.pi) * azimuth_bins).astype(int), azimuth_bins - 1)
    r_bins = int(math.ceil(rng_.max() / range_step)) + 1
    r_bin = np.minimum((rng_ / range_step).astype(int), r_bins - 1)
    profile = np.zeros((azimuth_bins, r_bins), np.float32)
    np.maximum.at(profile, (a_bin.ravel(), r_bin.ravel()), occupancy.ravel().astype(np.float32))
    r = (np.arange(r_bins) + 0.5) * range_step
    sigma = sigma0 + sigma_slope * r  # per source range
    spread = np.exp(-0.5 * ((r[:, None] - r[None, :]) / sigma[None, :]) ** 2)  # [out, source]
    smeared = np.minimum(profile @ spread.T, 1.0)
    return smeared[a_bin, r_bin].astype(np.float32)


def camera_view(occupancy: np.ndarray, rng: np.random.Generator, columns: int = 64, column_dropout: float = 0.3,
                noise: float = 0.1) -> np.ndarray:
    """(1, H, W): `depth_smear` of the occupancy, with each of ``columns`` azimuth sectors (the
    camera's image columns) dropped with probability ``column_dropout``, plus Gaussian noise."""
    grid = occupancy.shape[0]
    smeared = depth_smear(occupancy)
    _, az = polar_coordinates(grid)
    sector = np.minimum((az / (2 * np.pi) * columns).astype(int), columns - 1)
    alive = rng.random(columns) >= column_dropout
    view = smeared * alive[sector] + noise * rng.standard_normal((grid, grid))
    return view[None].astype(np.float32)


def lidar_exact_input(scene, p: dict, rng: np.random.Generator) -> np.ndarray:
    """BEV input ``lidar_exact``: occupancy and height / 2 m of the labelled footprints, with
    ``lidar_dropout`` (default 2%) of the cells zeroed."""
    boxes = metric_to_cells(scene.boxes, p["cell"], p["grid"])
    view = lidar_view(boxes, np.asarray(scene.heights) / 2.0, p["grid"], rng, p.get("lidar_dropout", 0.02))
    return view.astype(np.float32)


def camera_input(scene, p: dict, rng: np.random.Generator) -> np.ndarray:
    """BEV input ``camera``: the footprints' occupancy lifted through the fixed depth
    distribution (`depth_smear`), with azimuth-column dropout and noise (`camera_view`)."""
    boxes = metric_to_cells(scene.boxes, p["cell"], p["grid"])
    occupancy = box_cells(boxes, p["grid"], p["grid"]).numpy().any(0).astype(np.float32)
    return camera_view(occupancy, rng, p.get("columns", 64), p.get("column_dropout", 0.3), p.get("noise", 0.1))


lidar_exact_input.channels = ["occupancy", "height"]
camera_input.channels = ["smear"]


def make_dual_scene(rng: np.random.Generator, p: dict) -> Scene:
    """One two-class scene (`sample_scene`) as a `kd_engine.data.bev.Scene` in metres, origin at
    the grid centre (no clutter; no points: both views are rendered from the footprints)."""
    grid, cell = p["grid"], p["cell"]
    boxes, labels, heights = sample_scene(rng, grid, (p["min_boxes"], p["max_boxes"]))
    metric = np.column_stack([labels, (boxes[:, 0] - grid / 2) * cell, (boxes[:, 1] - grid / 2) * cell,
                              boxes[:, 2] * cell, boxes[:, 3] * cell, boxes[:, 4]]).astype(float).reshape(-1, 6)
    heights_m = 2.0 * heights  # fractions of a 2 m height range
    empty = np.zeros((0, 6))
    return Scene(metric, heights_m, empty, np.zeros(0), np.zeros((0, 3)))


BEV_INPUTS.register("lidar_exact")(lidar_exact_input)
BEV_INPUTS.register("camera")(camera_input)

PARAMS = {"n_train": 1200, "n_val": 0, "n_test": 300, "grid": 32, "cell": 0.5, "heatmap_stride": 2,
          "min_boxes": 2, "max_boxes": 6, "lidar_dropout": 0.02, "columns": 64, "column_dropout": 0.3, "noise": 0.1}
FRACTIONS = ("lidar_dropout", "column_dropout")


def dual_params(data_cfg) -> dict:
    """The checked parameters of a ``bev_dual`` data config (defaults filled in)."""
    params = dict(cfg_get(data_cfg, "params", {}) or {})
    reject_unknown(params, PARAMS, "data.params", "dataset bev_dual")
    p = {**PARAMS, **params}
    for key in ("n_train", "grid", "heatmap_stride", "min_boxes", "max_boxes", "columns"):
        check(isinstance(p[key], int) and not isinstance(p[key], bool) and p[key] >= 1, f"data.params.{key}",
              f"must be a positive integer, got {p[key]!r}")
    for key in ("n_val", "n_test"):
        check(isinstance(p[key], int) and not isinstance(p[key], bool) and p[key] >= 0, f"data.params.{key}",
              f"must be an integer >= 0, got {p[key]!r}")
    for key in FRACTIONS:
        check(isinstance(p[key], (int, float)) and 0 <= p[key] <= 1, f"data.params.{key}",
              f"must be a number in [0, 1], got {p[key]!r}")
    check(isinstance(p["cell"], (int, float)) and p["cell"] > 0, "data.params.cell", f"must be > 0, got {p['cell']!r}")
    check(isinstance(p["noise"], (int, float)) and p["noise"] >= 0, "data.params.noise", f"must be >= 0, got {p['noise']!r}")
    check(p["min_boxes"] <= p["max_boxes"], "data.params.min_boxes",
          f"must be <= max_boxes {p['max_boxes']}, got {p['min_boxes']}")
    check(p["grid"] % (2 * p["heatmap_stride"]) == 0, "data.params.grid",
          f"must be a multiple of 2 x heatmap_stride ({2 * p['heatmap_stride']}), got {p['grid']}")
    return {**p, "inputs": ["lidar_exact", "camera"]}


@lru_cache(maxsize=4)
def _bundle(key: str, seed: int) -> DataBundle:
    p = json.loads(key)
    rng = np.random.default_rng(seed)
    splits, start = [], 0
    for n in (p["n_train"], p["n_val"], p["n_test"]):
        splits.append(generate(p, n, rng, start, make=make_dual_scene, num_classes=len(CLASS_NAMES)))
        start += n
    side = p["grid"] // p["heatmap_stride"]
    meta = {"channels": [f"lidar:{c}" for c in lidar_exact_input.channels] + ["camera:smear"], "cell": p["cell"],
            "grid": p["grid"], "heatmap_stride": p["heatmap_stride"], "heatmap_side": side,
            "output_cell": p["cell"] * p["heatmap_stride"], "teacher_channels": LIDAR_CHANNELS,
            "student_channels": CAMERA_CHANNELS}
    return DataBundle(*splits, num_classes=len(CLASS_NAMES), input_shape=(len(CHANNELS), p["grid"], p["grid"]),
                      class_names=list(CLASS_NAMES), name="bev_dual", meta=meta)


@DATASETS.register("bev_dual")
def build_bev_dual(data_cfg, seed: int) -> DataBundle:
    """Dual-modality BEV scenes (module docstring); the same parameters and seed give the same
    bundle, built once per process (every arm of a seed reads the same scenes)."""
    return _bundle(json.dumps(dual_params(data_cfg), sort_keys=True), int(seed))


build_bev_dual.task = "bev"
