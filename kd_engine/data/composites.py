"""Procedural composites for image harmonization: a foreground pasted under the wrong light.

Each scene is drawn as albedos (surface colours before lighting) on a ``size`` x ``size`` RGB
canvas: a smooth background gradient with 2-4 flat shapes (discs and rectangles), and one
foreground shape (its mask is the foreground) with a gentle gradient of its own. Albedos are
near-grey (a grey level plus a small tint of at most ``tint``), so the colour and contrast of a
rendered region tell how it is lit: an illumination is a per-channel gain g in [0.6, 1.4] and a
gamma γ in [0.7, 1.4], and a region of albedo A renders as clip(g · A^γ, 0, 1).

- the real image I_real renders the whole scene under the background's illumination;
- the composite I_comp renders the background the same way and the foreground under a second,
  independent draw, so only the foreground is inconsistent;
- the input is [I_comp, mask] (4 channels), the target I_real (3 channels); what a model must do
  is re-light the foreground to match the background, which needs the background's light (a
  global property of the image) at every foreground pixel.

Splits are drawn from disjoint random streams of the split seed; instance ids run 0.. over
train, then val, then test. The builder carries ``task = "harmonization"``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from kd_engine.data.base import DataBundle, TensorInstanceDataset, cfg_get
from kd_engine.data.registry import DATASETS
from kd_engine.errors import ConfigError
from kd_engine.params import reject_unknown

PARAMS = {"n_train": 1500, "n_val": 150, "n_test": 300, "size": 24, "tint": 0.15}
GAIN, GAMMA = (0.6, 1.4), (0.7, 1.4)


class CompositeDataset(TensorInstanceDataset):
    """``x``: (N, 4, H, W) composite RGB + foreground mask; ``y``: (N, 3, H, W) real image (float,
    not labels); ``mask``: (N, H, W) in {0, 1}."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, images: np.ndarray | None = None):
        super().__init__(x, torch.zeros(len(y)), ids, images)
        self.y = torch.as_tensor(y, dtype=torch.float32)

    @property
    def mask(self) -> torch.Tensor:
        return self.x[:, 3]

    def subset(self, positions: Sequence[int] | np.ndarray) -> "CompositeDataset":
        p = torch.as_tensor(np.asarray(positions, dtype=np.int64))
        return CompositeDataset(self.x[p], self.y[p], self.ids[p], None if self._images is None else self._images[p.numpy()])


def render(albedo: np.ndarray, gain: np.ndarray, gamma: float) -> np.ndarray:
    """clip(g · A^γ, 0, 1) of a (..., 3) albedo under a per-channel gain and a gamma."""
    return np.clip(gain * np.power(np.clip(albedo, 0.0, 1.0), gamma), 0.0, 1.0)


def _albedo(rng: np.random.Generator, tint: float) -> np.ndarray:
    return np.clip(rng.uniform(0.25, 0.85) + rng.uniform(-tint, tint, size=3), 0.05, 1.0)


def _shape(rng: np.random.Generator, size: int, low: float, high: float) -> np.ndarray:
    """A random disc or axis-aligned rectangle as a boolean (size, size) mask."""
    rows, cols = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.2, 0.8, size=2) * size
    hy, hx = rng.uniform(low, high, size=2) * size
    if rng.random() < 0.5:
        return ((rows - cy) / hy) ** 2 + ((cols - cx) / hx) ** 2 <= 1.0
    return (np.abs(rows - cy) <= hy) & (np.abs(cols - cx) <= hx)


def make_composites(n: int, rng: np.random.Generator, size: int = 24, tint: float = 0.15):
    """n scenes: composites (n, 3, S, S), reals (n, 3, S, S), masks (n, S, S), all float32."""
    comp = np.zeros((n, 3, size, size), np.float32)
    real = np.zeros_like(comp)
    masks = np.zeros((n, size, size), np.float32)
    ramp = np.linspace(0.0, 1.0, size)
    for i in range(n):
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        a, b = _albedo(rng, tint), _albedo(rng, tint)
        albedo = a + (b - a) * t[..., None]  # (S, S, 3)
        for _ in range(int(rng.integers(2, 5))):
            albedo[_shape(rng, size, 0.08, 0.22)] = _albedo(rng, tint)
        fg = _shape(rng, size, 0.18, 0.32)
        c, d = _albedo(rng, tint), _albedo(rng, tint)
        fg_albedo = c + (d - c) * (0.5 * t[..., None])
        albedo[fg] = fg_albedo[fg]
        light = (rng.uniform(*GAIN, size=3), rng.uniform(*GAMMA))
        other = (rng.uniform(*GAIN, size=3), rng.uniform(*GAMMA))
        lit, mislit = render(albedo, *light), render(albedo, *other)
        composite = np.where(fg[..., None], mislit, lit)
        real[i], comp[i], masks[i] = lit.transpose(2, 0, 1), composite.transpose(2, 0, 1), fg
    return comp, real, masks


def _check(p: dict) -> None:
    for key in ("n_train", "n_val", "n_test"):
        if isinstance(p[key], bool) or not isinstance(p[key], int) or p[key] < 1:
            raise ConfigError(f"data.params.{key}: must be a positive integer, got {p[key]!r}")
    if isinstance(p["size"], bool) or not isinstance(p["size"], int) or p["size"] < 8 or p["size"] % 4:
        raise ConfigError(f"data.params.size: must be a multiple of 4, at least 8, got {p['size']!r}")
    if isinstance(p["tint"], bool) or not isinstance(p["tint"], (int, float)) or not 0 <= p["tint"] <= 0.5:
        raise ConfigError(f"data.params.tint: must be a number in [0, 0.5], got {p['tint']!r}")


@DATASETS.register("composites")
def build_composites(data_cfg: Any, seed: int) -> DataBundle:
    params = dict(cfg_get(data_cfg, "params", {}) or {})
    reject_unknown(params, PARAMS, "data.params", "dataset composites")
    p = {**PARAMS, **params}
    _check(p)
    size = p["size"]
    if cfg_get(data_cfg, "image_size") not in (None, size):
        raise ConfigError(f"data.image_size: composites are data.params.size = {size} px, "
                          f"got {cfg_get(data_cfg, 'image_size')}")
    splits, start = [], 0
    for index, n in enumerate((p["n_train"], p["n_val"], p["n_test"])):
        rng = np.random.default_rng([int(seed), index])
        comp, real, masks = make_composites(n, rng, size, float(p["tint"]))
        x = np.concatenate([comp, masks[:, None]], axis=1)
        ids = torch.arange(start, start + n, dtype=torch.int64)
        start += n
        splits.append(CompositeDataset(torch.from_numpy(x), torch.from_numpy(real), ids,
                                       images=comp.transpose(0, 2, 3, 1)))
    return DataBundle(train=splits[0], val=splits[1], test=splits[2], num_classes=3, input_shape=(4, size, size),
                      class_names=["R", "G", "B"], name="composites",
                      meta={"source": "procedural composites (foreground under a second illumination)",
                            "split_seed": seed, **p})


build_composites.task = "harmonization"
