"""Digits for class editing (generation runs): turn images of a source digit into a target digit.

Each split (stratified over all ten digits, fixed by the split seed) keeps only its images of the
``source_class`` digit; ``y`` is that source label and ``bundle.meta["target_class"]`` the class every edit
aims at. The training split's images of every digit are kept in ``bundle.meta["prior"]`` (x, y,
ids): the diffusion model and the judging classifier learn from them, never from val or test.
Instance ids are sklearn's row indices.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kd_engine.data.registry import DATASETS
from kd_engine.data.base import DataBundle, TensorInstanceDataset, cfg_get, stratified_split
from kd_engine.data.digits import _load
from kd_engine.errors import ConfigError
from kd_engine.params import reject_unknown

PARAMS = {"source_class": 3, "target_class": 8}


def _params(data_cfg: Any) -> dict[str, int]:
    params = dict(cfg_get(data_cfg, "params", {}) or {})
    reject_unknown(params, PARAMS, "data.params", "dataset digits_edit")
    p = {**PARAMS, **params}
    for key in PARAMS:
        if not isinstance(p[key], int) or isinstance(p[key], bool) or not 0 <= p[key] <= 9:
            raise ConfigError(f"data.params.{key}: a digit 0-9, got {p[key]!r}")
    if p["source_class"] == p["target_class"]:
        raise ConfigError(f"data.params.target_class: must differ from source_class ({p['source_class']}), "
                          f"got {p['target_class']}")
    return p


@DATASETS.register("digits_edit")
def build_digits_edit(data_cfg: Any, seed: int) -> DataBundle:
    if cfg_get(data_cfg, "image_size") not in (None, 8):
        raise ConfigError("data.image_size: digits images are 8x8")
    p = _params(data_cfg)
    x, y = _load()
    train, val, test = stratified_split(y, float(cfg_get(data_cfg, "val_fraction", 0.15)),
                                        float(cfg_get(data_cfg, "test_fraction", 0.2)), seed)

    def source_split(idx):
        idx = np.sort(idx[y[idx] == p["source_class"]])
        return TensorInstanceDataset(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]),
                                     torch.from_numpy(idx), images=x[idx, 0])

    train_all = np.sort(train)
    prior = {"x": torch.from_numpy(x[train_all]), "y": torch.from_numpy(y[train_all]),
             "ids": torch.from_numpy(train_all)}
    return DataBundle(train=source_split(train), val=source_split(val), test=source_split(test),
                      num_classes=10, input_shape=(1, 8, 8), class_names=[str(c) for c in range(10)],
                      name="digits_edit",
                      meta={"source": "sklearn.datasets.load_digits", "split_seed": seed, **p, "prior": prior})


build_digits_edit.task = "generation"
