"""Digit mosaics for multi-label learning (L2D, paper 25): 16×16 images made of 2×2 digit tiles
with 1–4 distinct classes; the label is the set of classes present (multi-hot over 10).

Train, validation and test mosaics are built from disjoint pools of sklearn digits (a
stratified split of the 1797 images by the split seed), so no digit image is shared across
splits. Multi-hot targets live in ``bundle.meta["targets"]`` (an (N, 10) array aligned with
``bundle.meta["target_ids"]``), read by multi-label methods through instance ids. The ``y`` the
single-label training loop sees is the top-left tile's class, so the loop's own accuracy is
"top-left digit accuracy", not the task metric (use ``kd_engine.metrics_extra.multilabel_map``).
Instance ids: 0.. for train, then val, then test (generator indices).
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

PARAMS = {"n_train": 3000, "n_val": 400, "n_test": 800, "max_labels": 4}


def make_mosaics(images: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator,
                 max_labels: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n mosaics from a pool of (M, 8, 8) images: k ~ U{1..max_labels} distinct classes, each on
    at least one of the 4 tiles (the other tiles repeat one of them). Returns x (n, 1, 16, 16),
    multi-hot targets (n, 10) and the top-left class (n,)."""
    by_class = {c: np.flatnonzero(labels == c) for c in range(10)}
    x = np.zeros((n, 1, 16, 16), dtype=np.float32)
    targets = np.zeros((n, 10), dtype=np.float32)
    top_left = np.zeros(n, dtype=np.int64)
    for i in range(n):
        k = int(rng.integers(1, max_labels + 1))
        classes = rng.choice(10, size=k, replace=False)
        tiles = np.concatenate([classes, rng.choice(classes, size=4 - k)])
        rng.shuffle(tiles)
        for t, c in enumerate(tiles):
            r, col = divmod(t, 2)
            x[i, 0, 8 * r:8 * r + 8, 8 * col:8 * col + 8] = images[rng.choice(by_class[int(c)])]
        targets[i, classes] = 1.0
        top_left[i] = tiles[0]
    return x, targets, top_left


@DATASETS.register("digit_mosaics")
def build_digit_mosaics(data_cfg: Any, seed: int) -> DataBundle:
    params = dict(cfg_get(data_cfg, "params", {}) or {})
    reject_unknown(params, PARAMS, "data.params", "dataset digit_mosaics")
    p = {**PARAMS, **params}
    for key, value in p.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"data.params.{key}: must be a positive integer, got {value!r}")
    if p["max_labels"] > 4:
        raise ConfigError(f"data.params.max_labels: a 2x2 mosaic holds at most 4 classes, got {p['max_labels']}")
    if cfg_get(data_cfg, "image_size") not in (None, 16):
        raise ConfigError("data.image_size: digit mosaics are 16x16")
    images, labels = _load()
    images = images[:, 0]
    pools = stratified_split(labels, 0.15, 0.25, seed)
    rng = np.random.default_rng(seed)
    splits, start = [], 0
    all_targets, all_ids = [], []
    for pool, n in zip(pools, (p["n_train"], p["n_val"], p["n_test"])):
        x, targets, top_left = make_mosaics(images[pool], labels[pool], n, rng, p["max_labels"])
        ids = np.arange(start, start + n, dtype=np.int64)
        start += n
        splits.append(TensorInstanceDataset(torch.from_numpy(x), torch.from_numpy(top_left),
                                            torch.from_numpy(ids), images=x[:, 0]))
        all_targets.append(targets)
        all_ids.append(ids)
    return DataBundle(train=splits[0], val=splits[1], test=splits[2], num_classes=10,
                      input_shape=(1, 16, 16), class_names=[str(c) for c in range(10)],
                      name="digit_mosaics",
                      meta={"source": "sklearn digits, 2x2 mosaics", "split_seed": seed, **p,
                            "targets": np.concatenate(all_targets), "target_ids": np.concatenate(all_ids),
                            "multilabel": True})


def targets_for(bundle: DataBundle, split: str) -> np.ndarray:
    """The (N, 10) multi-hot targets of one split, in the split's row order."""
    ids = getattr(bundle, split).ids.numpy()
    return bundle.meta["targets"][np.searchsorted(bundle.meta["target_ids"], ids)]
