"""Digits under a domain shift with new classes, for taxonomy-adaptive adaptation (OTD, paper 5).

Digits are halved (stratified, by the split seed). The *source* half keeps only the known
classes (< ``known_classes``), clean and labelled. The *target* half is "stained" (inversion,
Gaussian blur σ = 0.7, gamma ∈ [0.7, 1.4], noise σ = 0.15, per image, seeded) and split into
target-train (unlabelled, label −1, except ``shots`` labelled images per novel class) and
target-test (all classes, labelled). The train split is source + target-train; the test split is
target-test; there is no val split. Ground truth kept for measurement only, in ``bundle.meta``
(aligned with the train split): ``domain`` (0 source, 1 target), ``true_label``, ``fewshot``.
The few-label convention is *inferred* (our reconstruction of OTD).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage

from kd_engine.data.registry import DATASETS
from kd_engine.data.base import DataBundle, TensorInstanceDataset, cfg_get, stratified_split
from kd_engine.data.digits import _load
from kd_engine.errors import ConfigError
from kd_engine.params import reject_unknown

DEFAULTS = {"known_classes": 8, "shots": 5, "target_test_fraction": 0.4, "blur": 0.7, "noise": 0.15,
            "gamma": [0.7, 1.4], "invert": True}


def stain(img: np.ndarray, rng: np.random.Generator, blur: float = 0.7, noise: float = 0.15,
          gamma=(0.7, 1.4), invert: bool = True) -> np.ndarray:
    out = img.astype(np.float64)
    if invert:
        out = 1.0 - out
    if blur > 0:
        out = ndimage.gaussian_filter(out, blur)
    out = np.clip(out, 0.0, 1.0) ** rng.uniform(*gamma)
    out = out + rng.normal(0.0, noise, out.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _params(data_cfg: Any) -> dict[str, Any]:
    params = dict(cfg_get(data_cfg, "params", {}) or {})
    reject_unknown(params, DEFAULTS, "data.params", "dataset digits_shift")
    p = {**DEFAULTS, **params}
    if not 1 <= int(p["known_classes"]) < 10:
        raise ConfigError(f"data.params.known_classes: must be in 1..9, got {p['known_classes']}")
    if int(p["shots"]) < 0:
        raise ConfigError(f"data.params.shots: must be >= 0, got {p['shots']}")
    return p


@DATASETS.register("digits_shift")
def build_digits_shift(data_cfg: Any, seed: int) -> DataBundle:
    p = _params(data_cfg)
    x, y = _load()
    n, known = len(y), int(p["known_classes"])
    source_pos, _, target_pos = stratified_split(y, 0.0, 0.5, seed)
    rng = np.random.default_rng([int(seed), 5])
    t_train_local, _, t_test_local = stratified_split(y[target_pos], 0.0, float(p["target_test_fraction"]), seed + 1)
    t_train, t_test = target_pos[t_train_local], target_pos[t_test_local]
    stained = {int(i): stain(x[i, 0], rng, p["blur"], p["noise"], tuple(p["gamma"]), p["invert"])
               for i in np.sort(target_pos)}
    src = source_pos[y[source_pos] < known]
    fewshot = np.zeros(len(t_train), dtype=bool)
    for c in range(known, 10):
        members = np.flatnonzero(y[t_train] == c)
        fewshot[rng.choice(members, size=min(int(p["shots"]), len(members)), replace=False)] = True
    tx = np.stack([stained[int(i)] for i in t_train])
    train_x = np.concatenate([x[src, 0], tx])[:, None]
    train_y = np.concatenate([y[src], np.where(fewshot, y[t_train], -1)])
    train = TensorInstanceDataset(torch.from_numpy(train_x.copy()), torch.from_numpy(train_y),
                                  torch.from_numpy(np.concatenate([src, t_train]).astype(np.int64)),
                                  images=train_x[:, 0])
    test_x = np.stack([stained[int(i)] for i in t_test])[:, None]
    test = TensorInstanceDataset(torch.from_numpy(test_x.copy()), torch.from_numpy(y[t_test].copy()),
                                 torch.from_numpy(t_test.astype(np.int64)), images=test_x[:, 0])
    empty = test.subset(np.array([], dtype=np.int64))
    meta = {"source": "digits_shift", "known_classes": known,
            "domain": [0] * len(src) + [1] * len(t_train),
            "true_label": np.concatenate([y[src], y[t_train]]).tolist(),
            "fewshot": [False] * len(src) + fewshot.tolist()}
    return DataBundle(train=train, val=empty, test=test, num_classes=10, input_shape=(1, 8, 8),
                      class_names=[str(i) for i in range(10)], name="digits_shift", meta=meta)
