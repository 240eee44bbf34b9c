"""scikit-learn's bundled 8x8 digits: the default dataset, no download and fast on CPU."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch

from kd_engine.data.registry import DATASETS
from kd_engine.data.base import DataBundle, TensorInstanceDataset, cfg_get, split_bundle
from kd_engine.errors import ConfigError
from kd_engine.params import reject_unknown


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # (N,1,8,8) in [0, 1]
    return x, d.target.astype(np.int64)


@DATASETS.register("digits")
def build_digits(data_cfg: Any, seed: int) -> DataBundle:
    """Instance id = row index in sklearn's array, so it never changes between runs."""
    size = cfg_get(data_cfg, "image_size")
    if size is not None and int(size) != 8:
        raise ConfigError(f"data.image_size: digits images are 8x8, got {size}")
    params = dict(cfg_get(data_cfg, "params", {}) or {})
    reject_unknown(params, (), "data.params", "dataset digits")
    x, y = _load()
    full = TensorInstanceDataset(torch.from_numpy(x.copy()), torch.from_numpy(y.copy()),
                                 torch.arange(len(y), dtype=torch.int64), images=x[:, 0])
    return split_bundle(full, data_cfg, seed, num_classes=10,
                        class_names=[str(i) for i in range(10)], name="digits",
                        meta={"source": "sklearn.datasets.load_digits"})
