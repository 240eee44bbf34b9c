"""Bird's-eye-view (BEV) scenes for 3-D detection in miniature: boxes on a ground plane, seen by a
ray-casting range sensor at the origin, rasterised into a BEV grid.

A scene holds 1..``max_objects`` labelled objects of three classes at random yaw (footprints
length × width, heights): car 4 × 2 m (1.5 m), pedestrian 0.6 × 0.6 m (1.75 m), cyclist
1.8 × 0.6 m (1.7 m), plus 0..``max_clutter`` unlabelled low boxes (bushes, bins: 0.4–1.2 m wide,
0.3–1.1 m high) that a detector must learn to ignore. The sensor sits at the grid centre,
``sensor_height`` above the ground, and fires ``rays`` azimuths × ``beams`` elevations (from
−30° to −2°); each beam stops at the first box face it meets below that box's height. A face at
range r is therefore hit by ∝ 1/r azimuths and ∝ 1/r elevations: point density ∝ 1/range², and
faces turned away from the sensor or hidden behind another box get no points (self-occlusion
and shadows, as in a real sweep); a beam that passes over a box's near edge returns from its
roof. Points are jittered (σ = 2 cm), ``dropout`` of them are lost,
and ``noise_points`` spurious low returns are scattered over the grid. Ground returns are taken
as already removed.

The grid is ``grid`` × ``grid`` cells of ``cell`` m (32 × 32 × 0.5 m = 16 m across by default).
What a model sees is built by the named input builders of ``data.params.inputs`` (registry
``BEV_INPUTS``, channels concatenated in that order; ``meta["channels"]`` names them):

- ``lidar``: occupancy (1 where a cell holds a point), count (log(1 + points) / 3) and the
  maximum point height (m / 2).

Another modality (a camera-like view, a teacher's privileged input) is one more function
registered in ``BEV_INPUTS`` — ``builder(scene, p, rng) -> (C, grid, grid) float32`` with a
``channels`` attribute listing its channel names — and selected by listing it in ``inputs``.

Ground truth per scene: the boxes (class, centre x, y in m, length, width, yaw; ``boxes``), and
at the detector's output stride (``heatmap_stride`` cells per output cell): per-class centre
heatmaps (a Gaussian of σ = max(0.5, (l + w) / (6·output cell)) output cells around the cell
holding the centre, peak 1), the sub-cell centre offset and log length / log width at that cell
(``reg``, 4 channels) and the mask of centre cells (``reg_mask``). Splits are generated in turn
from one generator seeded by the split seed; instance ids are 0.. for train, then val, then test.
The builder carries ``task = "bev"``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from kd_engine.data.base import DataBundle, TensorInstanceDataset, cfg_get
from kd_engine.data.registry import DATASETS
from kd_engine.errors import ConfigError
from kd_engine.params import reject_unknown
from kd_engine.registry import Registry

CLASS_NAMES = ["car", "pedestrian", "cyclist"]
# footprint length, width and height (m) per class
CLASS_SIZES = np.asarray([[4.0, 2.0, 1.5], [0.6, 0.6, 1.75], [1.8, 0.6, 1.7]])
PARAMS = {"n_train": 1200, "n_val": 0, "n_test": 300, "grid": 32, "cell": 0.5, "max_objects": 5,
          "max_clutter": 3, "rays": 512, "beams": 24, "sensor_height": 1.8, "dropout": 0.1,
          "noise_points": 20, "min_range": 2.0, "heatmap_stride": 2, "inputs": ["lidar"]}
BEAM_RANGE_DEG = (-30.0, -2.0)
JITTER_M = 0.02

BEV_INPUTS: Registry = Registry("BEV input")
"""What a model sees of a scene: ``builder(scene, p, rng) -> (C, grid, grid)`` float32 arrays,
with ``builder.channels`` naming the channels (see the module docstring)."""


@dataclass
class Scene:
    """One generated scene in metres, sensor at (0, 0): labelled ``boxes`` (M, 6) = class, x, y,
    length, width, yaw; ``heights`` (M,); unlabelled ``clutter`` (K, 6) with class −1 and its
    ``clutter_heights``; the sensor's ``points`` (P, 3) = x, y, z."""

    boxes: np.ndarray
    heights: np.ndarray
    clutter: np.ndarray
    clutter_heights: np.ndarray
    points: np.ndarray


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """(M, 4, 2) footprint corners, counter-clockwise, of (M, ≥6) rows (class, x, y, l, w, yaw)."""
    local = np.asarray([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])
    lw = boxes[:, None, 3:5] * local[None]
    cos, sin = np.cos(boxes[:, 5])[:, None], np.sin(boxes[:, 5])[:, None]
    x = lw[..., 0] * cos - lw[..., 1] * sin + boxes[:, 1:2]
    y = lw[..., 0] * sin + lw[..., 1] * cos + boxes[:, 2:3]
    return np.stack([x, y], axis=-1)


def ray_cast(boxes: np.ndarray, heights: np.ndarray, rays: int, beams: int, sensor_height: float) -> np.ndarray:
    """Points (P, 3) where each of ``rays`` azimuths × ``beams`` elevations first meets a box face
    below the box's height; beams that meet nothing are dropped (no ground returns)."""
    if not len(boxes):
        return np.zeros((0, 3))
    corners = box_corners(boxes)
    start = corners.reshape(-1, 2)  # (S, 2) segment starts, 4 per box
    edge = (np.roll(corners, -1, axis=1) - corners).reshape(-1, 2)
    top = np.repeat(heights, 4)
    theta = np.linspace(0.0, 2 * np.pi, rays, endpoint=False)
    d = np.stack([np.cos(theta), np.sin(theta)], axis=1)  # (R, 2)
    # solve t·d − s·e = p for every ray and segment (Cramer's rule)
    det = -d[:, None, 0] * edge[None, :, 1] + edge[None, :, 0] * d[:, None, 1]
    safe = np.where(np.abs(det) < 1e-12, np.nan, det)
    t = (-start[None, :, 0] * edge[None, :, 1] + edge[None, :, 0] * start[None, :, 1]) / safe
    s = (d[:, None, 0] * start[None, :, 1] - d[:, None, 1] * start[None, :, 0]) / safe
    hit = (t > 1e-6) & (s >= 0) & (s <= 1)
    r_idx, s_idx = np.nonzero(hit)  # ray-major, so each ray's candidate faces are contiguous
    if not len(r_idx):
        return np.zeros((0, 3))
    phi = np.tan(np.deg2rad(np.linspace(*BEAM_RANGE_DEG, beams)))
    dist = t[r_idx, s_idx]
    # a ray crosses a box twice, entering and leaving; a beam that passes over the entry face
    # comes down on the roof, at the range where it descends to the box's height, if that lies
    # before the exit face
    key = r_idx * (len(start) // 4) + s_idx // 4
    entry = np.full(rays * (len(start) // 4), np.inf)
    np.minimum.at(entry, key, dist)
    leaving = dist > entry[key]
    z = sensor_height + dist[:, None] * phi[None]  # (P, B) height where each beam meets each face
    face = (z >= 0) & (z <= top[s_idx, None]) & ~leaving[:, None]
    roof = (top[s_idx, None] - sensor_height) / phi[None]
    on_roof = leaving[:, None] & (roof > entry[key][:, None]) & (roof <= dist[:, None])
    dist = np.where(face, dist[:, None], np.where(on_roof, roof, np.inf))
    starts = np.flatnonzero(np.r_[True, r_idx[1:] != r_idx[:-1]])
    first = np.minimum.reduceat(dist, starts, axis=0)  # (rays hit, B): the nearest face per beam
    ray, beam = np.nonzero(np.isfinite(first))
    r = first[ray, beam]
    ray = r_idx[starts][ray]
    return np.stack([r * d[ray, 0], r * d[ray, 1], sensor_height + r * phi[beam]], axis=1)


def _place(rng: np.random.Generator, sizes: np.ndarray, half: float, min_range: float,
           taken: list[tuple[float, float, float]]) -> tuple[float, float] | None:
    """A centre for a footprint of (l, w) inside the grid, away from the sensor and from the
    footprints already placed (bounding circles apart), or None after 50 tries."""
    radius = 0.5 * float(np.hypot(sizes[0], sizes[1]))
    for _ in range(50):
        x, y = rng.uniform(-half + radius, half - radius, size=2)
        if np.hypot(x, y) < min_range + radius:
            continue
        if all(np.hypot(x - tx, y - ty) > radius + tr + 0.2 for tx, ty, tr in taken):
            taken.append((x, y, radius))
            return float(x), float(y)
    return None


def make_scene(rng: np.random.Generator, p: dict) -> Scene:
    """One scene (see the module docstring for what it holds)."""
    half = 0.5 * p["grid"] * p["cell"]
    taken: list[tuple[float, float, float]] = []
    boxes, heights = [], []
    for cls in rng.integers(0, len(CLASS_NAMES), size=int(rng.integers(1, p["max_objects"] + 1))):
        l, w, h = CLASS_SIZES[cls]
        centre = _place(rng, CLASS_SIZES[cls, :2], half, p["min_range"], taken)
        if centre is not None:
            boxes.append([cls, *centre, l, w, rng.uniform(-np.pi, np.pi)])
            heights.append(h)
    clutter, clutter_h = [], []
    for _ in range(int(rng.integers(0, p["max_clutter"] + 1))):
        side = rng.uniform(0.4, 1.2)
        centre = _place(rng, np.asarray([side, side]), half, p["min_range"], taken)
        if centre is not None:
            clutter.append([-1, *centre, side, side, rng.uniform(-np.pi, np.pi)])
            clutter_h.append(rng.uniform(0.3, 1.1))
    boxes_a, clutter_a = np.asarray(boxes, float).reshape(-1, 6), np.asarray(clutter, float).reshape(-1, 6)
    heights_a, clutter_ha = np.asarray(heights, float), np.asarray(clutter_h, float)
    points = ray_cast(np.concatenate([boxes_a, clutter_a]), np.concatenate([heights_a, clutter_ha]),
                      p["rays"], p["beams"], p["sensor_height"])
    points = points[rng.random(len(points)) >= p["dropout"]]
    points = points + rng.normal(0.0, JITTER_M, size=points.shape)
    noise = np.column_stack([rng.uniform(-half, half, size=(p["noise_points"], 2)),
                             rng.uniform(0.0, 0.5, size=p["noise_points"])])
    return Scene(boxes_a, heights_a, clutter_a, clutter_ha, np.concatenate([points, noise]))


def cell_index(xy: np.ndarray, grid: int, cell: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, col, inside) of metric points (N, 2): row from y, column from x, origin at the grid
    centre."""
    col = np.floor(xy[:, 0] / cell + grid / 2).astype(int)
    row = np.floor(xy[:, 1] / cell + grid / 2).astype(int)
    inside = (row >= 0) & (row < grid) & (col >= 0) & (col < grid)
    return row, col, inside


@BEV_INPUTS.register("lidar")
def lidar_input(scene: Scene, p: dict, rng: np.random.Generator) -> np.ndarray:
    """Occupancy, log point count / 3 and maximum height / 2 m of each cell."""
    g = p["grid"]
    row, col, inside = cell_index(scene.points[:, :2], g, p["cell"])
    flat = row[inside] * g + col[inside]
    count = np.bincount(flat, minlength=g * g).reshape(g, g)
    height = np.zeros(g * g)
    np.maximum.at(height, flat, np.clip(scene.points[inside, 2], 0.0, None))
    return np.stack([(count > 0), np.log1p(count) / 3.0, height.reshape(g, g) / 2.0]).astype(np.float32)


lidar_input.channels = ["occupancy", "count", "max_height"]


def targets(boxes: np.ndarray, p: dict, num_classes: int = len(CLASS_NAMES)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class centre heatmaps (K, h, w), regression targets (4, h, w) = (dx, dy, log l, log w)
    and the centre-cell mask (h, w), at the output stride."""
    stride = p["heatmap_stride"]
    side, out_cell = p["grid"] // stride, p["cell"] * stride
    heat = np.zeros((num_classes, side, side), np.float32)
    reg = np.zeros((4, side, side), np.float32)
    mask = np.zeros((side, side), np.float32)
    rows, cols = np.mgrid[0:side, 0:side]
    for cls, x, y, l, w, _ in boxes:
        u, v = x / out_cell + side / 2, y / out_cell + side / 2
        c, r = min(int(u), side - 1), min(int(v), side - 1)
        sigma = max(0.5, (l + w) / (6 * out_cell))
        g = np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * sigma ** 2))
        heat[int(cls)] = np.maximum(heat[int(cls)], g)
        reg[:, r, c] = (u - c, v - r, np.log(l), np.log(w))
        mask[r, c] = 1.0
    return heat, reg, mask


class BEVScenes(TensorInstanceDataset):
    """In-memory BEV scenes: ``x`` (N, C, grid, grid) inputs, ``y`` the number of labelled objects,
    ``heatmap`` (N, K, h, w), ``reg`` (N, 4, h, w), ``reg_mask`` (N, h, w) and ``boxes``, one
    (M, 6) array per scene (class, x, y, l, w, yaw in m)."""

    def __init__(self, x, heatmap, reg, reg_mask, boxes: list[np.ndarray], ids):
        super().__init__(x, torch.as_tensor([len(b) for b in boxes], dtype=torch.int64), ids)
        self.heatmap = torch.as_tensor(heatmap, dtype=torch.float32)
        self.reg = torch.as_tensor(reg, dtype=torch.float32)
        self.reg_mask = torch.as_tensor(reg_mask, dtype=torch.float32)
        self.boxes = list(boxes)

    def subset(self, positions: Sequence[int] | np.ndarray) -> "BEVScenes":
        p = torch.as_tensor(np.asarray(positions, dtype=np.int64))
        return BEVScenes(self.x[p], self.heatmap[p], self.reg[p], self.reg_mask[p],
                         [self.boxes[i] for i in p.tolist()], self.ids[p])


def _check(p: dict) -> None:
    for key in ("n_train", "grid", "max_objects", "rays", "beams", "heatmap_stride"):
        value = p[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"data.params.{key}: must be a positive integer, got {value!r}")
    for key in ("n_val", "n_test", "max_clutter", "noise_points"):
        value = p[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"data.params.{key}: must be an integer >= 0, got {value!r}")
    for key, low, high in (("cell", 0.05, 5.0), ("sensor_height", 0.5, 5.0), ("dropout", 0.0, 0.9),
                           ("min_range", 0.0, 10.0)):
        value = p[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ConfigError(f"data.params.{key}: must be a number in [{low}, {high}], got {value!r}")
    if p["grid"] % p["heatmap_stride"]:
        raise ConfigError(f"data.params.heatmap_stride: must divide grid {p['grid']}, got {p['heatmap_stride']}")
    inputs = p["inputs"]
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise ConfigError(f"data.params.inputs: a non-empty list of {', '.join(BEV_INPUTS.names())}, got {inputs!r}")
    for name in inputs:
        BEV_INPUTS.get(name, field="data.params.inputs")


def generate(p: dict, n: int, rng: np.random.Generator, start: int = 0, make=None,
             num_classes: int = len(CLASS_NAMES)) -> BEVScenes:
    """n scenes of parameters ``p`` (all keys of ``PARAMS``) with ids start.., drawn from ``rng``."""
    builders: list[Callable[..., np.ndarray]] = [BEV_INPUTS.get(name) for name in p["inputs"]]
    xs, heats, regs, masks, boxes = [], [], [], [], []
    for _ in range(n):
        scene = (make or make_scene)(rng, p)
        xs.append(np.concatenate([b(scene, p, rng) for b in builders]))
        heat, reg, mask = targets(scene.boxes, p, num_classes)
        heats.append(heat), regs.append(reg), masks.append(mask), boxes.append(scene.boxes)
    side = p["grid"] // p["heatmap_stride"]
    channels = sum(len(b.channels) for b in builders)
    stack = lambda arrays, shape: np.stack(arrays) if arrays else np.zeros((0, *shape), np.float32)  # noqa: E731
    return BEVScenes(torch.from_numpy(stack(xs, (channels, p["grid"], p["grid"]))),
                     stack(heats, (num_classes, side, side)), stack(regs, (4, side, side)),
                     stack(masks, (side, side)), boxes, torch.arange(start, start + n, dtype=torch.int64))


def bev_params(data_cfg: Any) -> dict:
    """The checked generator parameters of a data config (defaults filled in)."""
    params = dict(cfg_get(data_cfg, "params", {}) or {})
    reject_unknown(params, PARAMS, "data.params", "dataset bev_scenes")
    p = {**PARAMS, **params}
    _check(p)
    return p


@DATASETS.register("bev_scenes")
def build_bev_scenes(data_cfg: Any, seed: int) -> DataBundle:
    p = bev_params(data_cfg)
    rng = np.random.default_rng(seed)
    splits, start = [], 0
    for n in (p["n_train"], p["n_val"], p["n_test"]):
        splits.append(generate(p, n, rng, start))
        start += n
    channels = [f"{name}:{c}" for name in p["inputs"] for c in BEV_INPUTS.get(name).channels]
    side = p["grid"] // p["heatmap_stride"]
    meta = {"channels": channels, "cell": p["cell"], "grid": p["grid"], "heatmap_stride": p["heatmap_stride"],
            "heatmap_side": side, "output_cell": p["cell"] * p["heatmap_stride"]}
    return DataBundle(*splits, num_classes=len(CLASS_NAMES), input_shape=(len(channels), p["grid"], p["grid"]),
                      class_names=list(CLASS_NAMES), name="bev_scenes", meta=meta)


build_bev_scenes.task = "bev"
