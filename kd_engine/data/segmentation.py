"""Digit scenes for dense prediction: scikit-learn digits pasted on a small canvas, with a label
per pixel (segmentation) and a depth per pixel (a continuous map, for RMSE and multi-task runs).

Each scene holds 1..``max_digits`` digits, each enlarged by an integer ``scale`` (nearest
neighbour) and pasted at a random place with a random depth d in [0.2, 0.9]. Digits are painted
from far to near, so a nearer digit occludes a farther one, and a digit's ink is ``1.1 - d``
bright: depth can be read from the image, which is what makes the depth map learnable.

- label map: 0 for background, ``1 + c`` where the ink of a digit of class c is visible (ink is
  a pixel at or above ``ink`` of the digit's own maximum);
- depth map: the visible digit's depth, 1.0 on background.

Train, validation and test scenes are built from disjoint pools of the 1797 digit images (a
stratified split by the split seed), as for the multi-label mosaics, so no digit image is shared
across splits. Instance ids: 0.. for train, then val, then test (generator indices). The
builder carries ``task = "dense"``; the run picks the dense task from it.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from kd_engine.data import DATASETS
from kd_engine.data.base import DataBundle, TensorInstanceDataset, cfg_get, stratified_split
from kd_engine.data.digits import _load
from kd_engine.errors import ConfigError
from kd_engine.params import reject_unknown

PARAMS = {"n_train": 600, "n_val": 100, "n_test": 200, "max_digits": 3, "scale": 2, "ink": 0.25,
          "noise": 0.05}
BACKGROUND_DEPTH = 1.0
DEPTH_RANGE = (0.2, 0.9)
CLASS_NAMES = ["background"] + [str(c) for c in range(10)]


class DenseInstanceDataset(TensorInstanceDataset):
    """In-memory scenes: ``y`` is the (N, H, W) label map; ``maps`` holds continuous per-pixel
    targets by name (e.g. ``depth``: (N, H, W) float32), aligned with ``x``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
                 maps: dict[str, torch.Tensor] | None = None, images: np.ndarray | None = None):
        super().__init__(x, y, ids, images)
        self.maps = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in (maps or {}).items()}
        for name, value in self.maps.items():
            if value.shape != self.y.shape:
                raise ValueError(f"map {name!r} has shape {tuple(value.shape)}, labels {tuple(self.y.shape)}")

    def subset(self, positions: Sequence[int] | np.ndarray) -> "DenseInstanceDataset":
        p = torch.as_tensor(np.asarray(positions, dtype=np.int64))
        imgs = None if self._images is None else self._images[p.numpy()]
        return DenseInstanceDataset(self.x[p], self.y[p], self.ids[p],
                                    {k: v[p] for k, v in self.maps.items()}, imgs)


def make_scenes(images: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator, size: int = 32,
                max_digits: int = 3, scale: int = 2, ink: float = 0.25,
                noise: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n scenes from a pool of (M, 8, 8) digit images in [0, 1]. Returns images (n, 1, size, size)
    float32 in [0, 1], label maps (n, size, size) int64 and depth maps (n, size, size) float32."""
    side = images.shape[-1] * scale
    if side > size:
        raise ConfigError(f"data.params.scale: a digit enlarged {scale}x is {side} px, larger than the "
                          f"{size}-px canvas")
    x = np.zeros((n, 1, size, size), dtype=np.float32)
    label = np.zeros((n, size, size), dtype=np.int64)
    depth = np.full((n, size, size), BACKGROUND_DEPTH, dtype=np.float32)
    for i in range(n):
        k = int(rng.integers(1, max_digits + 1))
        picks = rng.integers(0, len(images), size=k)
        depths = np.sort(rng.uniform(*DEPTH_RANGE, size=k))[::-1]  # far first: nearer digits occlude
        for pick, d in zip(picks, depths):
            digit = np.kron(images[pick], np.ones((scale, scale), dtype=np.float32))
            mask = digit >= ink * max(float(digit.max()), 1e-6)
            r, c = rng.integers(0, size - side + 1, size=2)
            window = (slice(r, r + side), slice(c, c + side))
            x[i, 0][window][mask] = digit[mask] * (1.1 - d)
            label[i][window][mask] = 1 + int(labels[pick])
            depth[i][window][mask] = d
    if noise > 0:
        x = np.clip(x + rng.normal(0.0, noise, size=x.shape).astype(np.float32), 0.0, 1.0)
    return x, label, depth


def _check(p: dict) -> None:
    for key in ("n_train", "n_val", "n_test", "max_digits", "scale"):
        value = p[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"data.params.{key}: must be a positive integer, got {value!r}")
    for key, low, high in (("ink", 0.0, 1.0), ("noise", 0.0, 0.5)):
        value = p[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ConfigError(f"data.params.{key}: must be a number in [{low}, {high}], got {value!r}")


@DATASETS.register("digit_scenes")
def build_digit_scenes(data_cfg: Any, seed: int) -> DataBundle:
    params = dict(cfg_get(data_cfg, "params", {}) or {})
    reject_unknown(params, PARAMS, "data.params", "dataset digit_scenes")
    p = {**PARAMS, **params}
    _check(p)
    size = int(cfg_get(data_cfg, "image_size", 32))
    images, labels = _load()
    pools = stratified_split(labels, 0.15, 0.25, seed)
    rng = np.random.default_rng(seed)
    splits, start = [], 0
    for pool, n in zip(pools, (p["n_train"], p["n_val"], p["n_test"])):
        x, label, depth = make_scenes(images[pool, 0], labels[pool], n, rng, size, p["max_digits"],
                                      p["scale"], float(p["ink"]), float(p["noise"]))
        ids = torch.arange(start, start + n, dtype=torch.int64)
        start += n
        splits.append(DenseInstanceDataset(torch.from_numpy(x), torch.from_numpy(label), ids,
                                           {"depth": torch.from_numpy(depth)}, images=x[:, 0]))
    return DataBundle(train=splits[0], val=splits[1], test=splits[2], num_classes=len(CLASS_NAMES),
                      input_shape=(1, size, size), class_names=list(CLASS_NAMES), name="digit_scenes",
                      meta={"source": "sklearn digits pasted on a canvas", "split_seed": seed, **p,
                            "maps": ["depth"], "background_depth": BACKGROUND_DEPTH})


build_digit_scenes.task = "dense"
