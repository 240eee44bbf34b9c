"""Trainers: the loop every run goes through, its runtime (device, DDP) and checkpoints.

`train` is imported on first use, so `kd_engine.trainers.checkpoint` (which `kd_engine.cache`
needs) can be imported without pulling in the loop, which itself imports `kd_engine.cache`.
"""
from __future__ import annotations

from typing import Any

__all__ = ["train"]


def __getattr__(name: str) -> Any:
    if name == "train":
        from kd_engine.trainers.loop import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
