"""The optimizer registry, apart from the package init so optimizer modules (DOT) can import it."""
from kd_engine.registry import Registry

OPTIMIZERS = Registry("optimizer")
