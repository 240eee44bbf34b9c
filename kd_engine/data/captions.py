"""Digit–caption pairs for two-tower image–text runs (task ``image_text``).

Each of scikit-learn's 1797 digits is upsampled to ``image_size`` pixels (bilinear) and drawn
``pairs_per_image`` times, each time with its own random attributes, and captioned by four tokens:

    [class, thickness, position, rotation]
    class      "0" … "9"
    thickness  thin / normal / thick   (grey erosion / none / grey dilation, 2×2 footprint)
    position   left / centre / right   (a horizontal shift of −shift / 0 / +shift pixels)
    rotation   rot-15 / rot0 / rot+15  (bilinear rotation by −angle / 0 / +angle degrees)

19 tokens in all (`VOCAB`), so 10 · 27 = 270 distinct captions. The attributes are drawn once from
``pair_seed`` (not the run seed): every run and every seed sees the same pairs. The held-out splits
hold out *images*, not pairs: the split seed cuts the 1797 source digits (stratified by digit)
into train / val / test, and both pairs of a digit go where it goes, so no test image is a
re-drawn training image. Pair id = ``pairs_per_image`` · (row in sklearn's array) + k.

A split is a `CaptionDataset`: ``x`` (N, 1, S, S) in [0, 1], ``y`` the digit, ``tokens`` (N, 4)
int64 and ``attributes`` (N, 3) (thickness, position, rotation as 0, 1, 2). `class_prompts`
gives the zero-shot prompt of each digit: [class, normal, centre, rot0].
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import torch
from annotated_types import Ge, Interval
from scipy import ndimage
from sklearn.model_selection import train_test_split

from kd_engine.data.base import DataBundle, TensorInstanceDataset, cfg_get
from kd_engine.data.digits import _load
from kd_engine.data.registry import DATASETS
from kd_engine.errors import ConfigError
from kd_engine.params import Param, read_params

ATTRIBUTES = {"thickness": ("thin", "normal", "thick"), "position": ("left", "centre", "right"),
              "rotation": ("rot-15", "rot0", "rot+15")}
VOCAB: tuple[str, ...] = tuple(str(d) for d in range(10)) + tuple(t for words in ATTRIBUTES.values() for t in words)
CAPTION_LENGTH = 4
NEUTRAL = (1, 1, 1)  # normal thickness, centre, no rotation: the zero-shot prompt's attributes
PARAMS = {"image_size": Param(16, Interval(ge=8, le=64)), "pairs_per_image": Param(2, Interval(ge=1, le=8)),
          "shift": Param(2, Ge(0)), "angle": Param(15.0, Interval(ge=0, le=90)), "pair_seed": Param(0, Ge(0))}


def caption_tokens(digit: int, thickness: int, position: int, rotation: int) -> list[int]:
    """Token ids of one caption (attributes as 0, 1, 2 in the order of `ATTRIBUTES`)."""
    return [int(digit), 10 + int(thickness), 13 + int(position), 16 + int(rotation)]


def caption_text(tokens: Sequence[int]) -> str:
    return " ".join(VOCAB[int(t)] for t in tokens)


def class_prompts(classes: int = 10) -> torch.Tensor:
    """(classes, 4) token ids of the zero-shot prompts [class, normal, centre, rot0]."""
    return torch.tensor([caption_tokens(c, *NEUTRAL) for c in range(classes)], dtype=torch.int64)


def render(digit: np.ndarray, thickness: int, position: int, rotation: int, size: int = 16,
           shift: int = 2, angle: float = 15.0) -> np.ndarray:
    """One (size, size) image in [0, 1] of an 8×8 digit with the given attributes (0, 1, 2 each):
    upsample → erode / dilate → rotate about the centre → shift sideways (zeros flow in)."""
    img = ndimage.zoom(digit.astype(np.float64), size / digit.shape[0], order=1)
    if thickness == 0:
        img = ndimage.grey_erosion(img, size=(2, 2))
    elif thickness == 2:
        img = ndimage.grey_dilation(img, size=(2, 2))
    if rotation != 1:
        img = ndimage.rotate(img, angle * (rotation - 1), reshape=False, order=1, mode="constant")
    if position != 1:
        img = ndimage.shift(img, (0, shift * (position - 1)), order=0, mode="constant")
    return np.clip(img, 0.0, 1.0).astype(np.float32)


class CaptionDataset(TensorInstanceDataset):
    """Image–caption pairs: ``x``, ``y`` (digit), ``ids`` and ``tokens`` (N, 4), ``attributes`` (N, 3)."""

    def __init__(self, x, y, ids, tokens, attributes, images=None):
        super().__init__(x, y, ids, images=images)
        self.tokens = torch.as_tensor(tokens, dtype=torch.int64)
        self.attributes = torch.as_tensor(attributes, dtype=torch.int64)

    def subset(self, positions) -> "CaptionDataset":
        p = torch.as_tensor(np.asarray(positions, dtype=np.int64))
        return CaptionDataset(self.x[p], self.y[p], self.ids[p], self.tokens[p], self.attributes[p])


@lru_cache(maxsize=4)
def _pairs(image_size: int, pairs_per_image: int, shift: int, angle: float, pair_seed: int):
    """Every pair of the generator (x, y, ids, tokens, attributes) as numpy arrays."""
    digits, labels = _load()
    rng = np.random.default_rng(pair_seed)
    attrs = rng.integers(0, 3, size=(len(labels), pairs_per_image, 3))
    x = np.stack([render(digits[i, 0], *attrs[i, k], size=image_size, shift=shift, angle=angle)
                  for i in range(len(labels)) for k in range(pairs_per_image)])[:, None]
    y = np.repeat(labels, pairs_per_image)
    attrs = attrs.reshape(-1, 3)
    tokens = np.array([caption_tokens(d, *a) for d, a in zip(y, attrs)], dtype=np.int64)
    return x, y, np.arange(len(y), dtype=np.int64), tokens, attrs


def image_split(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int):
    """(train, val, test) rows of the source digits, stratified by digit."""
    rows = np.arange(len(labels))
    rest, test = train_test_split(rows, test_size=test_fraction, random_state=seed, stratify=labels)
    if val_fraction <= 0:
        return np.sort(rest), np.zeros(0, np.int64), np.sort(test)
    train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), random_state=seed,
                                  stratify=labels[rest])
    return np.sort(train), np.sort(val), np.sort(test)


def caption_bundle(params: dict, val_fraction: float, test_fraction: float, seed: int) -> DataBundle:
    """The bundle of checked ``params`` (`PARAMS`), images held out as the module says."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 0.5:
            raise ConfigError(f"data.{name}: a number in [0, 0.5), got {value}")
    x, y, ids, tokens, attrs = _pairs(params["image_size"], params["pairs_per_image"], params["shift"],
                                      float(params["angle"]), params["pair_seed"])
    k = params["pairs_per_image"]
    full = CaptionDataset(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(ids), tokens, attrs)
    rows = [np.concatenate([r * k + j for j in range(k)]) if len(r) else r
            for r in image_split(_load()[1], val_fraction, test_fraction, seed)]
    train, val, test = (full.subset(np.sort(r)) for r in rows)
    return DataBundle(train=train, val=val, test=test, num_classes=10, input_shape=tuple(x.shape[1:]),
                      class_names=[str(d) for d in range(10)], name="digit_captions",
                      meta={"source": "sklearn.datasets.load_digits", "vocab": list(VOCAB),
                            "caption_length": CAPTION_LENGTH, **params, "split_seed": seed})


@DATASETS.register("digit_captions")
def build_digit_captions(data_cfg: Any, seed: int) -> DataBundle:
    if cfg_get(data_cfg, "image_size") is not None:
        raise ConfigError("data.image_size: set data.params.image_size for digit_captions (8-64)")
    p = read_params(dict(cfg_get(data_cfg, "params", {}) or {}), PARAMS, "data.params", "dataset digit_captions")
    return caption_bundle(p, float(cfg_get(data_cfg, "val_fraction", 0.15)),
                          float(cfg_get(data_cfg, "test_fraction", 0.2)), seed)


build_digit_captions.task = "image_text"
