"""A "webly collected" transfer pool for data-free KD (KD³, paper 12), made from digits.

Digits are split (stratified, by the split seed) into three disjoint parts: the teacher's
training images (~800), the pool *source* (~500) and the test images (~497). The pool (default
3000 images) is built from the source part only, so it never contains a teacher-training or a
test image:

* ``digit``: a source digit under a distribution shift (each of dilation/erosion, inversion,
  rotation ±30°, blur, with probability 0.5, at least one), label = the source digit's label;
* ``stroke``: 1–3 random strokes, a rectangle outline or a ring; label −1 (no digit);
* ``texture``: Gaussian noise, a sinusoidal grating or a checkerboard with noise; label −1.

``part: web`` (the student's run): train = the pool, no val, test = the test digits.
``part: clean`` (the teacher's run, via ``teacher.data``): train = the teacher's digits, no val,
test = the same test digits. The pool's ground truth (``kind``, ``in_distribution``) is kept in
``bundle.meta`` for measurement only; methods must not train on it.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from kd_engine.data.registry import DATASETS
from kd_engine.data.base import DataBundle, TensorInstanceDataset, cfg_get, stratified_split
from kd_engine.data.digits import _load
from kd_engine.errors import ConfigError
from kd_engine.params import reject_unknown

KINDS = ("digit", "stroke", "texture")
POOL_ID_OFFSET = 100_000  # pool ids never collide with digit row indices
DEFAULTS = {"part": "web", "pool_size": 3000, "digit_fraction": 0.4, "stroke_fraction": 0.3,
            "teacher_size": 800, "source_size": 500}


def shift_digit(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One shifted copy of an 8×8 digit in [0, 1]."""
    out = img.astype(np.float64)
    while True:
        ops = rng.random(4) < 0.5
        if ops.any():
            break
    if ops[0]:
        out = (ndimage.grey_dilation if rng.random() < 0.5 else ndimage.grey_erosion)(out, size=(2, 2))
    if ops[2]:
        out = ndimage.rotate(out, rng.uniform(-30, 30), reshape=False, order=1, mode="constant")
    if ops[3]:
        out = ndimage.gaussian_filter(out, 0.7)
    if ops[1]:
        out = 1.0 - out
    return np.clip(out, 0.0, 1.0)


def stroke_image(rng: np.random.Generator, size: int = 8) -> np.ndarray:
    img = np.zeros((size, size))
    yy, xx = np.mgrid[0:size, 0:size]
    shape = rng.integers(3)
    if shape == 0:  # strokes: line segments rasterised by dense sampling
        for _ in range(rng.integers(1, 4)):
            p, q = rng.uniform(0, size - 1, 2), rng.uniform(0, size - 1, 2)
            t = np.linspace(0, 1, 4 * size)
            r = np.clip(np.round(p[0] + t * (q[0] - p[0])).astype(int), 0, size - 1)
            c = np.clip(np.round(p[1] + t * (q[1] - p[1])).astype(int), 0, size - 1)
            img[r, c] = rng.uniform(0.6, 1.0)
    elif shape == 1:  # rectangle outline
        r0, c0 = rng.integers(0, size // 2, 2)
        r1, c1 = r0 + rng.integers(3, size - r0 + 1), c0 + rng.integers(3, size - c0 + 1)
        r1, c1 = min(r1, size) - 1, min(c1, size) - 1
        img[r0, c0:c1 + 1] = img[r1, c0:c1 + 1] = img[r0:r1 + 1, c0] = img[r0:r1 + 1, c1] = 1.0
    else:  # ring
        cy, cx, rad = rng.uniform(2.5, size - 3.5), rng.uniform(2.5, size - 3.5), rng.uniform(1.5, 3.5)
        d = np.hypot(yy - cy, xx - cx)
        img[np.abs(d - rad) < 0.7] = 1.0
    return np.clip(img + rng.normal(0, 0.05, img.shape), 0.0, 1.0)


def texture_image(rng: np.random.Generator, size: int = 8) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    kind = rng.integers(3)
    if kind == 0:
        img = rng.uniform(0.2, 0.6) + rng.normal(0, rng.uniform(0.1, 0.4), (size, size))
    elif kind == 1:
        theta, freq, phase = rng.uniform(0, np.pi), rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
        img = 0.5 + 0.5 * np.sin(freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    else:
        cell = rng.integers(1, 4)
        img = ((yy // cell + xx // cell) % 2).astype(float) + rng.normal(0, 0.15, (size, size))
    return np.clip(img, 0.0, 1.0)


def make_pool(source_x: np.ndarray, source_y: np.ndarray, n: int, digit_fraction: float,
              stroke_fraction: float, rng: np.random.Generator):
    """(x (n,8,8), y (n,) with −1 for non-digits, kind index (n,)) in a shuffled order."""
    n_digit = int(round(n * digit_fraction))
    n_stroke = int(round(n * stroke_fraction))
    kinds = np.array([0] * n_digit + [1] * n_stroke + [2] * (n - n_digit - n_stroke))
    kinds = kinds[rng.permutation(n)]
    x = np.zeros((n, 8, 8), dtype=np.float32)
    y = np.full(n, -1, dtype=np.int64)
    for i, kind in enumerate(kinds):
        if kind == 0:
            j = rng.integers(len(source_y))
            x[i], y[i] = shift_digit(source_x[j], rng), source_y[j]
        elif kind == 1:
            x[i] = stroke_image(rng)
        else:
            x[i] = texture_image(rng)
    return x, y, kinds


def _params(data_cfg: Any) -> dict[str, Any]:
    given = dict(cfg_get(data_cfg, "params", {}) or {})
    reject_unknown(given, DEFAULTS, "data.params", "dataset digits_web")
    params = {**DEFAULTS, **given}
    if params["part"] not in ("web", "clean"):
        raise ConfigError(f"data.params.part: expected web or clean, got {params['part']!r}")
    fractions = (params["digit_fraction"], params["stroke_fraction"])
    if not all(0.0 <= f <= 1.0 for f in fractions) or sum(fractions) > 1.0:
        raise ConfigError("data.params: digit_fraction and stroke_fraction must be in [0, 1] with a sum <= 1")
    if int(params["pool_size"]) < 1:
        raise ConfigError(f"data.params.pool_size: must be >= 1, got {params['pool_size']}")
    return params


@lru_cache(maxsize=8)
def _pool(seed: int, source: tuple, n: int, digit_fraction: float, stroke_fraction: float):
    """The pool is a pure function of these; cached because a run builds its data twice."""
    x, y = _load()
    pos = np.asarray(source, dtype=np.int64)
    return make_pool(x[pos, 0], y[pos], n, digit_fraction, stroke_fraction, np.random.default_rng([seed, 12]))


@DATASETS.register("digits_web")
def build_digits_web(data_cfg: Any, seed: int) -> DataBundle:
    p = _params(data_cfg)
    x, y = _load()
    n = len(y)
    teacher_pos, source_pos, test_pos = stratified_split(
        y, p["source_size"] / n, (n - p["teacher_size"] - p["source_size"]) / n, seed)
    digits = TensorInstanceDataset(torch.from_numpy(x.copy()), torch.from_numpy(y.copy()),
                                   torch.arange(n, dtype=torch.int64), images=x[:, 0])
    empty = digits.subset(np.array([], dtype=np.int64))
    meta = {"source": "digits_web", "teacher_positions": teacher_pos.tolist()}
    if p["part"] == "clean":
        train = digits.subset(teacher_pos)
    else:
        px, py, kinds = _pool(int(seed), tuple(source_pos.tolist()), int(p["pool_size"]),
                              float(p["digit_fraction"]), float(p["stroke_fraction"]))
        ids = torch.arange(len(py), dtype=torch.int64) + POOL_ID_OFFSET
        train = TensorInstanceDataset(torch.from_numpy(px[:, None].copy()), torch.from_numpy(py.copy()), ids, images=px.copy())
        meta.update(kind=kinds.tolist(), in_distribution=(kinds == 0).tolist())
    return DataBundle(train=train, val=empty, test=digits.subset(test_pos), num_classes=10,
                      input_shape=(1, 8, 8), class_names=[str(i) for i in range(10)], name="digits_web",
                      meta=meta)
