"""Long-tailed digits (MDCS, paper 16): class c keeps n_c = max_per_class · imbalance^(−c/(C−1))
training images (100 down to 5 at imbalance 20); validation and test are exactly balanced
(``val_per_class`` each, then the same count per class for test, as many as every class can
give). Instance ids are sklearn's row indices, as for ``digits``."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kd_engine.data.registry import DATASETS
from kd_engine.data.base import DataBundle, TensorInstanceDataset, cfg_get
from kd_engine.data.digits import _load
from kd_engine.errors import ConfigError, DataError
from kd_engine.params import reject_unknown

PARAMS = {"imbalance": 20.0, "max_per_class": 100, "val_per_class": 15}


def longtail_counts(num_classes: int, max_per_class: int, imbalance: float) -> list[int]:
    """n_c = round(max · imbalance^(−c/(C−1))), at least 1: class 0 is the head, C−1 the tail."""
    return [max(1, int(round(max_per_class * imbalance ** (-c / max(num_classes - 1, 1)))))
            for c in range(num_classes)]


def shot_groups(num_classes: int = 10) -> dict[str, list[int]]:
    """The many / medium / few split of classes: 0–2 / 3–6 / 7–9 (for 10 classes)."""
    a, b = round(num_classes * 0.3), round(num_classes * 0.7)
    return {"many": list(range(a)), "medium": list(range(a, b)), "few": list(range(b, num_classes))}


def _params(data_cfg: Any) -> dict[str, Any]:
    params = dict(cfg_get(data_cfg, "params", {}) or {})
    reject_unknown(params, PARAMS, "data.params", "dataset digits_longtail")
    out = {**PARAMS, **params}
    if not isinstance(out["imbalance"], (int, float)) or out["imbalance"] < 1:
        raise ConfigError(f"data.params.imbalance: must be a number >= 1, got {out['imbalance']!r}")
    for key in ("max_per_class", "val_per_class"):
        if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < 1:
            raise ConfigError(f"data.params.{key}: must be a positive integer, got {out[key]!r}")
    return out


@DATASETS.register("digits_longtail")
def build_digits_longtail(data_cfg: Any, seed: int) -> DataBundle:
    if cfg_get(data_cfg, "image_size") not in (None, 8):
        raise ConfigError("data.image_size: digits images are 8x8")
    p = _params(data_cfg)
    x, y = _load()
    counts = longtail_counts(10, p["max_per_class"], float(p["imbalance"]))
    rng = np.random.default_rng(seed)
    pools = {c: rng.permutation(np.flatnonzero(y == c)) for c in range(10)}
    spare = min(len(pools[c]) - counts[c] - p["val_per_class"] for c in range(10))
    if spare < 1:
        raise DataError(f"digits_longtail: max_per_class {p['max_per_class']} + val_per_class "
                        f"{p['val_per_class']} leaves no test images for some class")
    train = np.concatenate([pools[c][:counts[c]] for c in range(10)])
    val = np.concatenate([pools[c][counts[c]:counts[c] + p["val_per_class"]] for c in range(10)])
    test = np.concatenate([pools[c][counts[c] + p["val_per_class"]:][:spare] for c in range(10)])
    full = TensorInstanceDataset(torch.from_numpy(x.copy()), torch.from_numpy(y.copy()),
                                 torch.arange(len(y), dtype=torch.int64), images=x[:, 0])
    return DataBundle(train=full.subset(np.sort(train)), val=full.subset(np.sort(val)),
                      test=full.subset(np.sort(test)), num_classes=10, input_shape=(1, 8, 8),
                      class_names=[str(i) for i in range(10)], name="digits_longtail",
                      meta={"source": "sklearn.datasets.load_digits", "split_seed": seed,
                            "train_counts": counts, **p})
