"""KD Workbench engine: config-driven knowledge distillation that records everything it sees.

The Python API (`kd_engine.api`): ``distill`` runs a distillation of your own modules on your
own data into the run store; ``make_trainer`` returns the `Trainer` to advance one ``fit(steps=N)``
call at a time; ``load_student`` gives a recorded run's student back as a plain ``nn.Module``.
"""
__version__ = "0.1.0"

__all__ = ["Trainer", "distill", "load_student", "make_trainer"]

# Lazy, so `import kd_engine` (and the CLI's config checks) imports neither torch nor streamlit.
_LAZY = {"load_student": "kd_engine.export", "distill": "kd_engine.api", "make_trainer": "kd_engine.api",
         "Trainer": "kd_engine.trainer"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kd_engine' has no attribute {name!r}")
