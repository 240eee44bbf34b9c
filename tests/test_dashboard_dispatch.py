"""The dashboard pages pick a task's views from tables keyed by the run's `task` meta (a new task
adds a row, not an elif): every row names a registered task, and each view is callable."""
from __future__ import annotations

import pytest

from kd_engine.tasks import TASKS
from workbench.pages import compare, features, instances


@pytest.mark.parametrize("table", [instances.TASK_VIEWS, features.TASK_VIEWS, compare.TEACHER_VS_STUDENT,
                                   compare.RUN_VS_RUN], ids=["instances", "features", "compare_ts", "compare_rr"])
def test_every_row_names_a_registered_task(table):
    assert table and set(table) <= set(TASKS.names())
    for view in table.values():
        assert callable(view.render if isinstance(view, compare.PairView) else view)


def test_classification_takes_the_default_views():
    """Classification runs fall through to the label-based views of each page."""
    for table in (instances.TASK_VIEWS, features.TASK_VIEWS, compare.TEACHER_VS_STUDENT, compare.RUN_VS_RUN):
        assert "classification" not in table
