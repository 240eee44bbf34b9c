"""Distillation methods, one module each, registered by name in `METHODS`.

Every module in this package is imported here, so a new method needs only its own file.
"""
import pkgutil
from importlib import import_module

from kd_engine.methods.base import Distiller, StepOutput
from kd_engine.methods.registry import METHODS

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in ("base", "registry"):
        import_module(f"{__name__}.{_info.name}")

__all__ = ["METHODS", "Distiller", "StepOutput"]
