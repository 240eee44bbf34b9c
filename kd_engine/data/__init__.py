"""Data sources: ``build_data(cfg.data, seed)`` turns a data config into a ``DataBundle``.

A dataset builder is registered in ``DATASETS`` as ``builder(data_cfg, seed) -> DataBundle``
where ``seed`` is the already-resolved split seed (``data.split_seed`` or the run seed).
"""
from __future__ import annotations

from typing import Any

from kd_engine.registry import Registry

# Defined before the builder modules are imported: they register themselves into it.
DATASETS: Registry = Registry("dataset")

from kd_engine.data.base import (  # noqa: E402
    DataBundle,
    InstanceDataset,
    TensorInstanceDataset,
    cfg_get,
    stratified_split,
)
from kd_engine.data import digits, imagefolder, generators  # noqa: E402,F401
from kd_engine.data import digits_ncd  # noqa: E402,F401
from kd_engine.data import digits_longtail, digits_mismatch, mosaics  # noqa: E402,F401
from kd_engine.data import domain_shift, web_pool  # noqa: E402,F401
from kd_engine.data import clips  # noqa: E402,F401
from kd_engine.data.detection import builders as _detection_builders  # noqa: E402,F401
from kd_engine.data.generators import GENERATORS  # noqa: E402


def build_data(data_cfg: Any, seed: int) -> DataBundle:
    """Build the dataset named by ``data_cfg.name``; splits are fixed by the split seed."""
    name = cfg_get(data_cfg, "name")
    builder = DATASETS.get(name, field="data.name")
    split_seed = cfg_get(data_cfg, "split_seed", seed)
    return builder(data_cfg, int(split_seed))


__all__ = [
    "DATASETS", "GENERATORS", "DataBundle", "InstanceDataset", "TensorInstanceDataset",
    "build_data", "cfg_get", "stratified_split",
]
