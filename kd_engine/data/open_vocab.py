"""Digit scenes for open-vocabulary segmentation (task ``open_vocab_seg``): the scenes of
`kd_engine.data.segmentation` (same params, same splits), whose pixel labels a run uses for
evaluation only; the student trains on the images and a teacher's embeddings of them."""
from __future__ import annotations

from typing import Any

from kd_engine.data.base import DataBundle
from kd_engine.data.registry import DATASETS
from kd_engine.data.segmentation import build_digit_scenes


@DATASETS.register("open_vocab_scenes")
def build_open_vocab_scenes(data_cfg: Any, seed: int) -> DataBundle:
    bundle = build_digit_scenes(data_cfg, seed)
    bundle.name = "open_vocab_scenes"
    return bundle


build_open_vocab_scenes.task = "open_vocab_seg"
