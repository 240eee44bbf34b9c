"""Methods of open-vocabulary segmentation runs (task ``open_vocab_seg``): the student never
sees a pixel label; it learns from a frozen image–text teacher and names pixels zero-shot by the
teacher's class prompt embeddings. A method registers here and exposes, besides ``forward``,
``segment_columns(split)`` (per-image columns of its last evaluation of the split) and
``segment_artifacts(split, probe)`` (keyword arguments of the task's artifacts for the first
``probe`` images), which the task adds to its own records."""
from __future__ import annotations

from kd_engine.registry import Registry

OPEN_VOCAB_METHODS: Registry = Registry("open-vocabulary segmentation method")
