"""Seeded synthetic data generators and the ``synthetic`` dataset built from them.

A generator is ``fn(n, rng, **params) -> {"x": (N,C,H,W) float32, "y": (N,) int64,
"class_names": [...]}``; it must draw all randomness from ``rng`` so data is a pure
function of the seed. New generators register themselves in ``GENERATORS``.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import numpy as np
import torch

from kd_engine.data.registry import DATASETS
from kd_engine.data.base import DataBundle, TensorInstanceDataset, cfg_get, split_bundle
from kd_engine.errors import ConfigError
from kd_engine.registry import Registry

GENERATORS: Registry = Registry("generator")

SHAPE_CLASSES = ["square", "circle", "triangle", "cross"]


@GENERATORS.register("shapes")
def shapes(n: int, rng: np.random.Generator, image_size: int = 16, noise: float = 0.1,
           min_scale: float = 0.2, max_scale: float = 0.4) -> dict:
    """Filled square / circle / triangle / cross at random position, size and brightness.

    ``min_scale``/``max_scale`` bound the half-size as a fraction of ``image_size``;
    ``noise`` is the std of additive Gaussian pixel noise. Classes are exactly balanced.
    """
    if image_size < 6:
        raise ValueError(f"image_size must be at least 6, got {image_size}")
    if not 0 < min_scale <= max_scale <= 0.5:
        raise ValueError("need 0 < min_scale <= max_scale <= 0.5")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    s = int(image_size)
    y = rng.permutation(np.arange(n) % len(SHAPE_CLASSES)).astype(np.int64)
    r = rng.uniform(min_scale, max_scale, n) * s                    # half-size in pixels
    cx = rng.uniform(r, s - 1 - r)                                    # keeps the shape inside
    cy = rng.uniform(r, s - 1 - r)
    intensity = rng.uniform(0.5, 1.0, n)
    grid = np.arange(s, dtype=np.float64)
    dx = grid[None, None, :] - cx[:, None, None]                    # (N,1,S)
    dy = grid[None, :, None] - cy[:, None, None]                    # (N,S,1)
    rr = r[:, None, None]
    arm = np.maximum(rr / 4.0, 0.6)                                   # cross arm half-width
    masks = np.stack([
        (np.abs(dx) <= rr) & (np.abs(dy) <= rr),                      # square
        dx ** 2 + dy ** 2 <= rr ** 2,                                 # circle
        (np.abs(dy) <= rr) & (np.abs(dx) <= (dy + rr) / 2.0),         # triangle, apex up
        ((np.abs(dx) <= arm) & (np.abs(dy) <= rr))
        | ((np.abs(dy) <= arm) & (np.abs(dx) <= rr)),                 # cross
    ])                                                                # (4,N,S,S)
    img = masks[y, np.arange(n)].astype(np.float32) * intensity[:, None, None].astype(np.float32)
    img = img + rng.normal(0.0, noise, img.shape).astype(np.float32)
    x = np.clip(img, 0.0, 1.0)[:, None].astype(np.float32)
    return {"x": x, "y": y, "class_names": list(SHAPE_CLASSES)}


def call_generator(name: str, fn: Callable, n: int, rng: np.random.Generator,
                   params: dict) -> dict:
    """Call a generator, turning unknown or invalid params into a one-line ConfigError."""
    sig = inspect.signature(fn)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    allowed = [k for k in list(sig.parameters)[2:] if sig.parameters[k].kind is not
               inspect.Parameter.VAR_KEYWORD]
    for key in params:
        if key not in allowed and not accepts_any:
            raise ConfigError(f"data.params: unknown parameter {key!r} for generator {name} "
                              f"(allowed: generator, n, {', '.join(allowed)})")
    try:
        out = fn(n, rng, **params)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"data.params: invalid value for generator {name}: {e}") from None
    return out


@DATASETS.register("synthetic")
def build_synthetic(data_cfg: Any, seed: int) -> DataBundle:
    """Instance id = generator index; the same seed always yields identical data."""
    params = dict(cfg_get(data_cfg, "params", {}) or {})
    gen_name = params.pop("generator", "shapes")
    fn = GENERATORS.get(gen_name, field="data.params.generator")
    n = params.pop("n", 1200)
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        raise ConfigError(f"data.params.n: must be an integer >= 2, got {n!r}")
    size = cfg_get(data_cfg, "image_size")
    if size is not None and "image_size" not in params \
            and "image_size" in inspect.signature(fn).parameters:
        params["image_size"] = int(size)
    rng = np.random.default_rng(seed)
    out = call_generator(gen_name, fn, n, rng, params)
    x = np.ascontiguousarray(out["x"], dtype=np.float32)
    y = np.asarray(out["y"], dtype=np.int64)
    names = list(out["class_names"])
    if x.ndim != 4 or len(x) != n or y.shape != (n,):
        raise ConfigError(f"data.params.generator: {gen_name} returned x{x.shape}, y{y.shape} "
                          f"for n={n}; expected (N,C,H,W) and (N,)")
    display = np.clip(x[:, 0] if x.shape[1] == 1 else np.transpose(x[:, :3], (0, 2, 3, 1)), 0, 1)
    full = TensorInstanceDataset(torch.from_numpy(x), torch.from_numpy(y),
                                 torch.arange(n, dtype=torch.int64), images=display)
    meta = {"source": f"synthetic:{gen_name}", "generator": gen_name, "n": n,
            "params": dict(params)}
    return split_bundle(full, data_cfg, seed, num_classes=len(names), class_names=names,
                        name="synthetic", meta=meta)
