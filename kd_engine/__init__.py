"""KD Workbench engine: config-driven knowledge distillation that records everything it sees."""
__version__ = "0.1.0"
