"""Digits with a class-distribution mismatch for semi-supervised learning (WAD, paper 21).

The known classes 0..K−1 (K = ``known_classes``) are the task: ``labels_per_class`` training
images per known class carry their label; up to ``unlabelled_known`` other known-class training
images (drawn at random) join the unlabelled pool together with ⌈m·|U_known|/(1 − m)⌉ images
of the unknown classes K..9 (m = ``mismatch``), so a share m of the pool is out of
distribution. Unlabelled training items
have ``y = −1``: the truth (digit, known or not) is kept in ``bundle.meta["truth"]`` for
measurement only. Validation and test hold known-class images only. Instance ids are sklearn's
row indices.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from kd_engine.data.registry import DATASETS
from kd_engine.data.base import DataBundle, TensorInstanceDataset, cfg_get, stratified_split
from kd_engine.data.digits import _load
from kd_engine.errors import ConfigError, DataError
from kd_engine.params import reject_unknown

PARAMS = {"known_classes": 5, "labels_per_class": 10, "mismatch": 0.3, "unlabelled_known": 300}
UNLABELLED = -1


def _params(data_cfg: Any) -> dict[str, Any]:
    params = dict(cfg_get(data_cfg, "params", {}) or {})
    reject_unknown(params, PARAMS, "data.params", "dataset digits_mismatch")
    p = {**PARAMS, **params}
    if not isinstance(p["known_classes"], int) or not 2 <= p["known_classes"] <= 9:
        raise ConfigError(f"data.params.known_classes: an integer in [2, 9], got {p['known_classes']!r}")
    if not isinstance(p["labels_per_class"], int) or p["labels_per_class"] < 1:
        raise ConfigError(f"data.params.labels_per_class: a positive integer, got {p['labels_per_class']!r}")
    if not isinstance(p["unlabelled_known"], int) or p["unlabelled_known"] < 1:
        raise ConfigError(f"data.params.unlabelled_known: a positive integer, got {p['unlabelled_known']!r}")
    if not isinstance(p["mismatch"], (int, float)) or not 0 <= p["mismatch"] < 1:
        raise ConfigError(f"data.params.mismatch: a number in [0, 1), got {p['mismatch']!r}")
    return p


@DATASETS.register("digits_mismatch")
def build_digits_mismatch(data_cfg: Any, seed: int) -> DataBundle:
    if cfg_get(data_cfg, "image_size") not in (None, 8):
        raise ConfigError("data.image_size: digits images are 8x8")
    p = _params(data_cfg)
    k = p["known_classes"]
    x, y = _load()
    train, val, test = stratified_split(y, float(cfg_get(data_cfg, "val_fraction", 0.15)),
                                        float(cfg_get(data_cfg, "test_fraction", 0.2)), seed)
    rng = np.random.default_rng(seed)
    labelled, known_pool = [], []
    for c in range(k):
        pool = rng.permutation(train[y[train] == c])
        if len(pool) <= p["labels_per_class"]:
            raise DataError(f"digits_mismatch: class {c} has only {len(pool)} training images")
        labelled.append(pool[:p["labels_per_class"]])
        known_pool.append(pool[p["labels_per_class"]:])
    labelled = np.concatenate(labelled)
    known_pool = rng.permutation(np.concatenate(known_pool))[:p["unlabelled_known"]]
    unknown = rng.permutation(train[y[train] >= k])
    n_ood = math.ceil(p["mismatch"] * len(known_pool) / (1 - p["mismatch"]))
    if n_ood > len(unknown):
        raise DataError(f"digits_mismatch: mismatch {p['mismatch']} needs {n_ood} unknown-class images, "
                        f"only {len(unknown)} exist; lower data.params.mismatch")
    pool = np.sort(np.concatenate([labelled, known_pool, unknown[:n_ood]]))
    is_labelled = np.isin(pool, labelled)
    train_y = np.where(is_labelled, y[pool], UNLABELLED)
    images = x[:, 0]
    train_set = TensorInstanceDataset(torch.from_numpy(x[pool]), torch.from_numpy(train_y),
                                      torch.from_numpy(pool), images=images[pool])

    def known_split(idx):
        idx = idx[y[idx] < k]
        return TensorInstanceDataset(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]),
                                     torch.from_numpy(idx), images=images[idx])

    truth = {"instance_id": pool, "digit": y[pool], "known": (y[pool] < k).astype(np.int64),
             "labelled": is_labelled.astype(np.int64)}
    return DataBundle(train=train_set, val=known_split(val), test=known_split(test), num_classes=k,
                      input_shape=(1, 8, 8), class_names=[str(c) for c in range(k)],
                      name="digits_mismatch",
                      meta={"source": "sklearn.datasets.load_digits", "split_seed": seed, **p,
                            "n_labelled": int(is_labelled.sum()), "n_unknown": int(n_ood), "truth": truth})
