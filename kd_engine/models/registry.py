"""The model registry, in a module of its own so that the model modules can register into it
without importing the package that imports them (no cycle between `kd_engine.models` and its
submodules)."""
from __future__ import annotations

from typing import Any

from kd_engine.registry import Registry

MODELS: Registry = Registry("model")


def check_positive_int(**values: Any) -> None:
    """Raise ValueError (turned into ConfigError by build_model) for a non-positive int param."""
    for key, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{key} must be a positive integer, got {v!r}")
