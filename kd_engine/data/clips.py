"""Short synthetic clips with three modalities, for distilling modality teachers into an RGB
student (the ``mmego`` method).

A clip is ``frames`` grey frames of ``size``×``size``: one object of 3 shapes (square outline,
plus, X) moves in one of 4 directions at one of 2 speeds (1 or 2 px per frame), so the class
``shape·8 + direction·2 + speed−1`` has 24 values. Static distractors drawn from the same three
shapes clutter every frame, and every frame has its own pixel noise. The modalities carry
different shares of the class:

* ``rgb``: the frames. The shape is visible but so are the distractors; motion is read by
  comparing frames. The student sees only frames 0 and 2 (its input ``x``); the RGB teacher sees
  all of them.
* ``flow``: the differences of consecutive frames plus estimation noise (``flow_noise``). Static
  clutter cancels, so motion is clear, while the shape only shows at the moving edges.
* ``audio``: a 1-D sine of ``audio_len`` samples whose frequency is set by the speed alone, with
  noise: it tells 2 of the 24 classes' groups apart and nothing else.

Splits: ``teacher`` clips train the modality teachers; the ``train`` split (the student's) is
held out from them, so a teacher's loss on it is an honest measure of how far to trust it;
``val`` and ``test`` as usual. Every modality is kept for every id in ``meta["modalities"]``
(name → tensor indexed by instance id); ``meta["teacher_ids"]`` and ``meta["teacher_y"]`` are
the teachers' training clips.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kd_engine.data.registry import DATASETS
from kd_engine.data.base import DataBundle, TensorInstanceDataset, cfg_get
from kd_engine.errors import ConfigError
from kd_engine.params import reject_unknown

PARAMS = {"n_teacher": 1000, "n_train": 1000, "n_val": 300, "n_test": 600, "frames": 4, "size": 16,
          "noise": 0.3, "clutter": 3, "flow_noise": 0.4, "audio_len": 64, "audio_noise": 1.0}
SHAPES = ("square", "plus", "x")
DIRECTIONS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # (dy, dx): right, left, down, up
DIRECTION_NAMES = ("right", "left", "down", "up")
STUDENT_FRAMES = (0, 2)


def _patterns() -> np.ndarray:
    square = np.ones((5, 5), np.float32)
    square[1:4, 1:4] = 0
    plus = np.zeros((5, 5), np.float32)
    plus[2, :] = plus[:, 2] = 1
    cross = np.eye(5, dtype=np.float32)
    cross = np.maximum(cross, cross[::-1])
    return np.stack([square, plus, cross])


def class_names() -> list[str]:
    return [f"{s}-{d}-v{v}" for s in SHAPES for d in DIRECTION_NAMES for v in (1, 2)]


def _params(data_cfg: Any) -> dict[str, Any]:
    params = dict(cfg_get(data_cfg, "params", {}) or {})
    reject_unknown(params, PARAMS, "data.params", "dataset ego_clips")
    p = {**PARAMS, **params}
    for key in ("n_teacher", "n_train", "n_val", "n_test", "clutter", "audio_len"):
        if not isinstance(p[key], int) or p[key] < (0 if key in ("clutter", "n_val") else 1):
            raise ConfigError(f"data.params.{key}: a positive integer, got {p[key]!r}")
    if not isinstance(p["frames"], int) or not 3 <= p["frames"] <= 6:
        raise ConfigError(f"data.params.frames: an integer in [3, 6], got {p['frames']!r}")
    if not isinstance(p["size"], int) or p["size"] < 5 + 2 * (p["frames"] - 1):
        raise ConfigError(f"data.params.size: an integer >= {5 + 2 * (p['frames'] - 1)} (the object "
                          f"must fit its path), got {p['size']!r}")
    for key in ("noise", "flow_noise", "audio_noise"):
        if not isinstance(p[key], (int, float)) or p[key] < 0:
            raise ConfigError(f"data.params.{key}: a number >= 0, got {p[key]!r}")
    return p


def generate_clips(n: int, seed: int, frames: int = 4, size: int = 16, noise: float = 0.3,
                   clutter: int = 3, flow_noise: float = 0.4, audio_len: int = 64,
                   audio_noise: float = 1.0) -> dict[str, np.ndarray]:
    """``n`` clips (balanced classes in random order): labels and the three modalities, float32.
    rgb (n, frames, size, size); flow (n, frames − 1, size, size); audio (n, 1, audio_len)."""
    rng = np.random.default_rng(seed)
    pats = _patterns()
    y = rng.permutation(np.arange(n) % 24)
    shape, direction, speed = y // 8, (y // 2) % 4, y % 2 + 1
    rgb = rng.normal(0, noise, (n, frames, size, size)).astype(np.float32)
    for i in range(n):
        static = np.zeros((size, size), np.float32)
        for _ in range(clutter):
            r, c = rng.integers(0, size - 4, 2)
            static[r:r + 5, c:c + 5] = np.maximum(static[r:r + 5, c:c + 5], 0.8 * pats[rng.integers(3)])
        dy, dx = DIRECTIONS[direction[i]]
        travel = speed[i] * (frames - 1)
        lo_r, hi_r = (travel if dy < 0 else 0), size - 5 - (travel if dy > 0 else 0)
        lo_c, hi_c = (travel if dx < 0 else 0), size - 5 - (travel if dx > 0 else 0)
        r0, c0 = rng.integers(lo_r, hi_r + 1), rng.integers(lo_c, hi_c + 1)
        brightness = rng.uniform(0.8, 1.2)
        for t in range(frames):
            r, c = r0 + dy * speed[i] * t, c0 + dx * speed[i] * t
            frame = static.copy()
            frame[r:r + 5, c:c + 5] = np.maximum(frame[r:r + 5, c:c + 5], brightness * pats[shape[i]])
            rgb[i, t] += frame
    flow = np.diff(rgb, axis=1) + rng.normal(0, flow_noise, (n, frames - 1, size, size)).astype(np.float32)
    t = np.arange(audio_len) / audio_len
    freq = np.where(speed == 1, 4.0, 8.0)[:, None]
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    audio = np.sin(2 * np.pi * freq * t + phase) + rng.normal(0, audio_noise, (n, audio_len))
    return {"y": y.astype(np.int64), "rgb": rgb, "flow": flow.astype(np.float32),
            "audio": audio[:, None, :].astype(np.float32)}


@DATASETS.register("ego_clips")
def build_ego_clips(data_cfg: Any, seed: int) -> DataBundle:
    p = _params(data_cfg)
    sizes = [p["n_teacher"], p["n_train"], p["n_val"], p["n_test"]]
    gen = generate_clips(sum(sizes), seed, **{k: p[k] for k in ("frames", "size", "noise", "clutter",
                                                               "flow_noise", "audio_len", "audio_noise")})
    ids = np.arange(sum(sizes))
    cuts = np.cumsum([0] + sizes)
    student_x = gen["rgb"][:, list(STUDENT_FRAMES)]
    strip = np.concatenate(list(gen["rgb"].transpose(1, 0, 2, 3)), axis=2)  # (N, size, frames·size)
    display = np.clip((strip + 0.5) / 2.0, 0.0, 1.0)

    def part(k: int) -> TensorInstanceDataset:
        sel = ids[cuts[k]:cuts[k + 1]]
        return TensorInstanceDataset(torch.from_numpy(student_x[sel]), torch.from_numpy(gen["y"][sel]),
                                     torch.from_numpy(sel), images=display[sel])

    modalities = {name: torch.from_numpy(gen[name]) for name in ("rgb", "flow", "audio")}
    return DataBundle(train=part(1), val=part(2), test=part(3), num_classes=24,
                      input_shape=tuple(student_x.shape[1:]), class_names=class_names(), name="ego_clips",
                      meta={"source": "generated clips", "split_seed": seed, **p, "modalities": modalities,
                            "teacher_ids": torch.from_numpy(ids[:cuts[1]]),
                            "teacher_y": torch.from_numpy(gen["y"][:cuts[1]]),
                            "student_frames": list(STUDENT_FRAMES)})
