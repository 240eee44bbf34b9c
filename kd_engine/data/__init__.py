"""Data sources: ``build_data(cfg.data, seed)`` turns a data config into a ``DataBundle``.

A dataset builder is registered in ``DATASETS`` as ``builder(data_cfg, seed) -> DataBundle``
where ``seed`` is the already-resolved split seed (``data.split_seed`` or the run seed).
"""
from __future__ import annotations

from typing import Any

from kd_engine.data.registry import DATASETS

from kd_engine.data.base import (
    DataBundle,
    InstanceDataset,
    ItemInstanceDataset,
    TensorInstanceDataset,
    cfg_get,
    stratified_split,
)
from kd_engine.data import digits, imagefolder, generators  # noqa: F401
from kd_engine.data import digits_ncd  # noqa: F401
from kd_engine.data import digits_longtail, digits_mismatch, mosaics  # noqa: F401
from kd_engine.data import domain_shift, web_pool  # noqa: F401
from kd_engine.data import torchvision_sets  # noqa: F401
from kd_engine.data import digits_oneclass  # noqa: F401
from kd_engine.data import segmentation  # noqa: F401
from kd_engine.data import composites  # noqa: F401
from kd_engine.data import open_vocab  # noqa: F401
from kd_engine.data import digits_edit  # noqa: F401
from kd_engine.data import clips  # noqa: F401
from kd_engine.data import captions  # noqa: F401
from kd_engine.data import bev  # noqa: F401
from kd_engine.data import bev_dual  # noqa: F401
from kd_engine.data import rooms3d  # noqa: F401
from kd_engine.data import ground3d  # noqa: F401
from kd_engine.data import incremental  # noqa: F401
from kd_engine.data import shape_scenes  # noqa: F401
from kd_engine.data import room_echoes  # noqa: F401
from kd_engine.data.detection import builders as _detection_builders  # noqa: F401
from kd_engine.data.generators import GENERATORS


def build_data(data_cfg: Any, seed: int) -> DataBundle:
    """Build the dataset named by ``data_cfg.name``; splits are fixed by the split seed."""
    name = cfg_get(data_cfg, "name")
    builder = DATASETS.get(name, field="data.name")
    split_seed = cfg_get(data_cfg, "split_seed", seed)
    bundle = builder(data_cfg, int(split_seed))
    _attach_augmentation(bundle, cfg_get(data_cfg, "augment", "none"))
    return bundle


def _attach_augmentation(bundle: DataBundle, name: str) -> None:
    """Builders of standard datasets set their own preset (with the dataset's mean and std);
    any other in-memory training split gets ``data.augment`` on raw [0, 1] pixels here, so the
    setting never goes silently unused."""
    from kd_engine.data.augment import make_preset

    preset = make_preset(name, bundle.input_shape[-1] if len(bundle.input_shape) == 3 else None)
    train = bundle.train
    if preset.name != "none" and hasattr(train, "x") and getattr(train, "augment", None) is None:
        train.augment = preset.batch


__all__ = [
    "DATASETS", "GENERATORS", "DataBundle", "InstanceDataset", "ItemInstanceDataset", "TensorInstanceDataset",
    "build_data", "cfg_get", "stratified_split",
]
