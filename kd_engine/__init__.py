"""KD Workbench engine: config-driven knowledge distillation that records everything it sees."""
__version__ = "0.1.0"

__all__ = ["load_student"]


def __getattr__(name: str):
    # Lazy, so `import kd_engine` (and the CLI's config checks) does not import torch.
    if name == "load_student":
        from kd_engine.export import load_student

        return load_student
    raise AttributeError(f"module 'kd_engine' has no attribute {name!r}")
