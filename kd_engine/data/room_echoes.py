"""Rooms heard by echoes and seen as a panorama (for SAM, dense prediction from sound).

A room is a rectangle of ``room_size`` metres per side (each side drawn on its own) with 0 to
``max_obstacles`` axis-aligned box obstacles (sides 0.4–1.4 m) and a listener at a random free
position (at least 0.3 m from every wall and obstacle). From the listener, ``azimuths`` rays at
θ_k = 2πk/A (θ = 0 along +x, counter-clockwise, +90° to the listener's left) are cast; each ray's
first hit gives the **targets**: the depth d_k (metres) and whether it hit a wall (class 0) or an
obstacle (class 1).

- **Panorama** (the teacher's input): per azimuth the depth (with Gaussian noise σ =
  ``panorama_noise`` m, divided by ``MAX_RANGE``) and one-hot wall/obstacle channels: a camera
  with depth sees the room along the azimuth axis directly.
- **Binaural echoes** (the student's input): two ears × ``time_bins`` bins covering the round
  trip to ``MAX_RANGE``. Each azimuth adds a spike (Gaussian, σ = 1 bin) at its round-trip delay
  2d/c (c = 343 m/s), shifted by ±half the interaural delay (ears 0.18 m apart), with amplitude
  reflectivity/d² (walls 1.0, obstacles 0.6) times ear gains g_L,R(θ) = ½(1 ± 0.7 sin θ)(0.8 +
  0.2 cos θ) (louder on the side it comes from, a little louder in front); then noise whose
  σ decays exponentially over time (``echo_noise`` at t = 0, time constant a quarter of the
  window), and a fixed log compression sign(e)·log(1 + 10|e|). The time axis is **not**
  aligned with the azimuth axis: a bin holds every direction at that distance.

Input layout (``CHANNELS``): one (5, time_bins) tensor per room; channels 0–1 are the left and
right echoes, channels 2–4 the panorama (depth, wall, obstacle) in the first ``azimuths``
positions and zero after them. The echo models read channels 0–1, the panorama models channels
2–4 (`kd_engine.models.echo_cnn`), so one teacher-cache and one trainer serve both. Labels ``y``
are the (A,) wall/obstacle classes; ``depth`` holds the (A,) depths. Splits: the first
``rooms − test_rooms`` rooms train, the rest test (no validation split: the last epoch is
reported); ids are the room index. A bundle is built once per process for its parameters.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from annotated_types import Ge, Gt, Interval

from kd_engine.data.base import DataBundle, TensorInstanceDataset, cfg_get
from kd_engine.data.registry import DATASETS
from kd_engine.errors import ConfigError
from kd_engine.params import Param, read_params

CLASS_NAMES = ("wall", "obstacle")
CHANNELS = ("echo_left", "echo_right", "panorama_depth", "panorama_wall", "panorama_obstacle")
ECHO_CHANNELS, PANORAMA_CHANNELS = [0, 1], [2, 3, 4]
SPEED_OF_SOUND = 343.0  # m/s
MAX_RANGE = 12.0  # metres: the echo window covers the round trip to here (> the diagonal of an 8 m room)
EAR_SPACING = 0.18  # metres between the ears
REFLECTIVITY = (1.0, 0.6)  # wall, obstacle
CLEARANCE = 0.3  # metres between the listener and any surface
PARAMS = {"rooms": Param(2000, Ge(4)), "test_rooms": Param(400, Ge(1)), "azimuths": Param(64, Ge(4)),
          "time_bins": Param(256, Ge(16)), "room_size": Param([3.0, 8.0]), "max_obstacles": Param(3, Ge(0)),
          "panorama_noise": Param(0.05, Ge(0.0)), "echo_noise": Param(0.05, Ge(0.0)),
          "partition_seed": Param(0, Ge(0)), "obstacle_size": Param([0.4, 1.4]),
          "spike_width": Param(1.0, Gt(0.0)), "gain_asymmetry": Param(0.7, Interval(ge=0.0, le=1.0))}


class RoomEchoDataset(TensorInstanceDataset):
    """Rooms as (5, T) inputs, (A,) wall/obstacle labels, (A,) depths and the room geometry."""

    def __init__(self, x, y, ids, depth, geometry):
        super().__init__(x, y, ids)
        self.depth = torch.as_tensor(depth, dtype=torch.float32)
        self.geometry = geometry  # (N, 4 + 4·max_obstacles): width, height, listener x, y, boxes (NaN: none)


def ray_depths(width: float, height: float, listener: np.ndarray, boxes: np.ndarray,
               angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(depth, label) of the first surface hit along each angle from ``listener`` inside the
    [0, width] × [0, height] room with boxes (M, 4) [x0, y0, x1, y1] (label 0 wall, 1 box)."""
    dx, dy = np.cos(angles), np.sin(angles)
    with np.errstate(divide="ignore", invalid="ignore"):
        tx = np.where(dx > 0, (width - listener[0]) / dx, np.where(dx < 0, -listener[0] / dx, np.inf))
        ty = np.where(dy > 0, (height - listener[1]) / dy, np.where(dy < 0, -listener[1] / dy, np.inf))
        depth, label = np.minimum(tx, ty), np.zeros(len(angles), np.int64)
        for x0, y0, x1, y1 in boxes:  # slab test: the ray enters the box at max(t_near), leaves at min(t_far)
            t1x, t2x = (x0 - listener[0]) / dx, (x1 - listener[0]) / dx
            t1y, t2y = (y0 - listener[1]) / dy, (y1 - listener[1]) / dy
            near = np.maximum(np.where(dx != 0, np.minimum(t1x, t2x), -np.inf),
                              np.where(dy != 0, np.minimum(t1y, t2y), -np.inf))
            far = np.minimum(np.where(dx != 0, np.maximum(t1x, t2x), np.inf),
                             np.where(dy != 0, np.maximum(t1y, t2y), np.inf))
            inside_x = (dx != 0) | ((x0 <= listener[0]) & (listener[0] <= x1))
            inside_y = (dy != 0) | ((y0 <= listener[1]) & (listener[1] <= y1))
            hit = inside_x & inside_y & (near <= far) & (near > 0) & (near < depth)
            depth, label = np.where(hit, near, depth), np.where(hit, 1, label)
    return depth, label


def sample_room(rng: np.random.Generator, p: dict) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(width, height, listener (2,), boxes (M, 4)) of one room; boxes that leave no free place
    for the listener are dropped."""
    lo, hi = p["room_size"]
    width, height = rng.uniform(lo, hi, size=2)
    boxes = []
    for _ in range(int(rng.integers(0, p["max_obstacles"] + 1))):
        w, h = rng.uniform(*p["obstacle_size"], size=2)
        w, h = min(w, width - 2 * CLEARANCE), min(h, height - 2 * CLEARANCE)
        x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        boxes.append((x0, y0, x0 + w, y0 + h))
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    for drop in range(len(boxes) + 1):
        kept = boxes[: len(boxes) - drop]
        for _ in range(50):
            spot = rng.uniform([CLEARANCE, CLEARANCE], [width - CLEARANCE, height - CLEARANCE])
            if not ((kept[:, 0] - CLEARANCE <= spot[0]) & (spot[0] <= kept[:, 2] + CLEARANCE)
                    & (kept[:, 1] - CLEARANCE <= spot[1]) & (spot[1] <= kept[:, 3] + CLEARANCE)).any():
                return float(width), float(height), spot, kept
    raise AssertionError("an empty room always has a free place")  # pragma: no cover


def ear_gains(angles: np.ndarray, asymmetry: float) -> np.ndarray:
    """(2, A) left and right gains ½(1 ± a·sin θ)(0.8 + 0.2·cos θ)."""
    front = 0.8 + 0.2 * np.cos(angles)
    return 0.5 * np.stack([1 + asymmetry * np.sin(angles), 1 - asymmetry * np.sin(angles)]) * front


def echoes(depth: np.ndarray, label: np.ndarray, angles: np.ndarray, rng: np.random.Generator, p: dict) -> np.ndarray:
    """(2, T) compressed binaural echoes of one room (see the module docstring)."""
    bins = p["time_bins"]
    bin_seconds = 2 * MAX_RANGE / SPEED_OF_SOUND / bins
    delay = 2 * depth / SPEED_OF_SOUND / bin_seconds  # (A,) in bins
    itd = EAR_SPACING / SPEED_OF_SOUND * np.sin(angles) / bin_seconds  # the left ear hears leftward sound first
    centres = np.stack([delay - itd / 2, delay + itd / 2])  # (2, A)
    amplitude = np.asarray(REFLECTIVITY)[label] / np.maximum(depth, CLEARANCE) ** 2
    weights = ear_gains(angles, p["gain_asymmetry"]) * amplitude  # (2, A)
    t = np.arange(bins, dtype=np.float64)
    spikes = np.exp(-0.5 * ((t[None, None, :] - centres[:, :, None]) / p["spike_width"]) ** 2)  # (2, A, T)
    signal = (weights[:, :, None] * spikes).sum(1)
    signal += p["echo_noise"] * np.exp(-t / (bins / 4)) * rng.standard_normal((2, bins))
    return np.sign(signal) * np.log1p(10 * np.abs(signal))


def make_room(index: int, p: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(input (5, T), labels (A,), depth (A,), geometry row) of room ``index``."""
    rng = np.random.default_rng([p["partition_seed"], index])
    width, height, listener, boxes = sample_room(rng, p)
    angles = 2 * math.pi * np.arange(p["azimuths"]) / p["azimuths"]
    depth, label = ray_depths(width, height, listener, boxes, angles)
    x = np.zeros((len(CHANNELS), p["time_bins"]), np.float32)
    x[:2] = echoes(depth, label, angles, rng, p)
    noisy = depth + p["panorama_noise"] * rng.standard_normal(len(depth))
    x[2, : p["azimuths"]] = noisy / MAX_RANGE
    x[3, : p["azimuths"]], x[4, : p["azimuths"]] = label == 0, label == 1
    geometry = np.full(4 + 4 * p["max_obstacles"], np.nan)
    geometry[:4] = (width, height, *listener)
    geometry[4: 4 + boxes.size] = boxes.ravel()
    return x, label, depth.astype(np.float32), geometry


@lru_cache(maxsize=4)
def _rooms(frozen: tuple) -> tuple[np.ndarray, ...]:
    p = dict(frozen)
    made = [make_room(i, p) for i in range(p["rooms"])]
    return tuple(np.stack(part) for part in zip(*made))


def _check(p: dict) -> None:
    if not 1 <= p["test_rooms"] < p["rooms"]:
        raise ConfigError(f"data.params.test_rooms: must be in 1..{p['rooms'] - 1} (data.params.rooms - 1), "
                          f"got {p['test_rooms']!r}")
    if p["azimuths"] > p["time_bins"]:
        raise ConfigError(f"data.params.azimuths: at most data.params.time_bins ({p['time_bins']}) so the "
                          f"panorama fits the input, got {p['azimuths']}")
    for key, low in (("room_size", 2 * CLEARANCE + 0.5), ("obstacle_size", 0.05)):
        value = p[key]
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and low <= float(value[0]) <= float(value[1])
                and float(value[1]) * math.sqrt(2) < MAX_RANGE):
            raise ConfigError(f"data.params.{key}: [min, max] metres with {low} <= min <= max and a room "
                              f"diagonal under {MAX_RANGE} m, got {value!r}")


@DATASETS.register("room_echoes")
def room_echoes(data_cfg, seed: int) -> DataBundle:
    """The rooms of ``data.params``; fixed by ``partition_seed``, not by the run seed (every seed
    of an experiment sees the same rooms; the seeds vary the networks)."""
    p = read_params(cfg_get(data_cfg, "params", {}) or {}, PARAMS, "data.params", "dataset room_echoes")
    _check(p)
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in p.items()))
    x, y, depth, geometry = _rooms(frozen)
    cut = p["rooms"] - p["test_rooms"]

    def split(rows: np.ndarray) -> RoomEchoDataset:
        return RoomEchoDataset(torch.from_numpy(x[rows]), torch.from_numpy(y[rows]), torch.as_tensor(rows),
                               depth[rows], geometry[rows])

    train, test = split(np.arange(cut)), split(np.arange(cut, p["rooms"]))
    return DataBundle(train=train, val=split(np.arange(0)), test=test, num_classes=len(CLASS_NAMES),
                      input_shape=(len(CHANNELS), p["time_bins"]), class_names=list(CLASS_NAMES),
                      name="room_echoes",
                      meta={"channels": list(CHANNELS), "azimuths": p["azimuths"], "time_bins": p["time_bins"],
                            "max_range": MAX_RANGE, "params": {k: (list(v) if isinstance(v, tuple) else v)
                                                               for k, v in p.items()}})


room_echoes.task = "echo_depth"
