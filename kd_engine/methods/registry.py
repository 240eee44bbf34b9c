"""The method registry lives apart from the package init so method modules can import it."""
from kd_engine.registry import Registry

METHODS = Registry("method")
