"""Digits for novel class discovery (NCD, Cr-KD, paper 10): some digit classes are *known* (labelled),
the others *novel* (their training labels are never used for training, only for evaluation).

Labels are renumbered so the known classes come first: label k < len(known_classes) is a known
class, label >= len(known_classes) a novel one (``meta["known"]`` holds the count). Class names
keep the original digits. Instance ids are sklearn's row indices, as for ``digits``.

    data: {name: digits_ncd, params: {known_classes: [0, 1, 2, 3, 4]}}
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kd_engine.data.registry import DATASETS
from kd_engine.data.base import TensorInstanceDataset, cfg_get, split_bundle
from kd_engine.data.digits import _load
from kd_engine.errors import ConfigError
from kd_engine.params import reject_unknown

PARAMS = ("known_classes",)


def ncd_order(known_classes: Any) -> list[int]:
    """The digits in label order: the known classes (as given), then the novel ones ascending."""
    if (not isinstance(known_classes, list) or not known_classes
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 9 for c in known_classes)
            or len(set(known_classes)) != len(known_classes) or len(known_classes) > 8):
        raise ConfigError("data.params.known_classes: a list of 1 to 8 distinct digits 0-9, "
                          f"got {known_classes!r}")
    return list(known_classes) + [c for c in range(10) if c not in known_classes]


@DATASETS.register("digits_ncd")
def build_digits_ncd(data_cfg: Any, seed: int):
    size = cfg_get(data_cfg, "image_size")
    if size is not None and int(size) != 8:
        raise ConfigError(f"data.image_size: digits images are 8x8, got {size}")
    params = dict(cfg_get(data_cfg, "params", {}) or {})
    reject_unknown(params, PARAMS, "data.params", "dataset digits_ncd")
    order = ncd_order(params.get("known_classes", [0, 1, 2, 3, 4]))
    known = len(params.get("known_classes", [0, 1, 2, 3, 4]))
    x, digit = _load()
    relabel = np.empty(10, dtype=np.int64)
    relabel[order] = np.arange(10)
    y = relabel[digit]
    full = TensorInstanceDataset(torch.from_numpy(x.copy()), torch.from_numpy(y),
                                 torch.arange(len(y), dtype=torch.int64), images=x[:, 0])
    names = [f"{d}" if k < known else f"{d} (novel)" for k, d in enumerate(order)]
    return split_bundle(full, data_cfg, seed, num_classes=10, class_names=names, name="digits_ncd",
                        meta={"source": "sklearn.datasets.load_digits", "known": known, "digit_order": order})
