"""Per-instance weighting strategies, one module each; every module here is imported so a new
strategy needs only its own file."""
import pkgutil
from importlib import import_module

from kd_engine.weighting.base import WEIGHTINGS, WeightingStrategy, build_weighting

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        import_module(f"{__name__}.{_info.name}")

__all__ = ["WEIGHTINGS", "WeightingStrategy", "build_weighting"]
