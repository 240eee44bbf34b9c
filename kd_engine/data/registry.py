"""The dataset registry, in a module of its own so that dataset modules can register into it
without importing the package that imports them (no cycle between `kd_engine.data` and its
submodules)."""
from __future__ import annotations

from kd_engine.registry import Registry

DATASETS: Registry = Registry("dataset")
