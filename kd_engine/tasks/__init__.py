"""Kinds of run (classification, detection, ...), each a `Task` registered in `TASKS`.

Every module in this package is imported here, so a new task needs only its own file; the
dataset builder's ``task`` attribute names the task a run uses (`task_for`).
"""
import pkgutil
from importlib import import_module

from kd_engine.tasks.base import TASKS, Artifact, Batch, Evaluation, Task

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        import_module(f"{__name__}.{_info.name}")


def task_for(dataset_name: str) -> type[Task]:
    """The task class of a registered dataset (its builder's ``task``, classification by default)."""
    from kd_engine.data import DATASETS

    builder = DATASETS.get(dataset_name, field="data.name")
    return TASKS.get(getattr(builder, "task", "classification"), field="data.name")


__all__ = ["TASKS", "Artifact", "Batch", "Evaluation", "Task", "task_for"]
