"""Compare-page views of per-azimuth room runs (meta `task: echo_depth`): the teacher against the
student of one run, and one run's student against another's, room by room (depth RMSE per test
room from the recorded rows) with the split's RMSE, abs-rel and mIoU side by side."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from kd_engine.store import Run
from workbench.figures.echo import room_error_scatter

METRICS = ("rmse", "abs_rel", "mIoU")


def _last_test(run: Run) -> pd.DataFrame:
    epochs = run.instance_epochs("test")
    return run.instances(split="test", epoch=max(epochs)) if epochs else pd.DataFrame()


def compare(run: Run) -> None:
    """Teacher against student of one run."""
    final = run.final_metrics()
    table = pd.DataFrame([{"metric": m, **{role: final.get(f"test/{role}_{m}") for role in ("teacher", "student")}}
                          for m in METRICS])
    st.dataframe(table, hide_index=True, key="echo_cmp_table")
    rows = _last_test(run)
    if rows.empty or "teacher_rmse" not in rows:
        st.info("No per-room test rows with a teacher yet (written at the last test pass).")
        return
    st.plotly_chart(room_error_scatter(rows["teacher_rmse"], rows["student_rmse"], rows["instance_id"],
                                       "teacher RMSE (m)", "student RMSE (m)",
                                       f"depth RMSE per test room, teacher vs student (n={len(rows)})"),
                    key="echo_cmp_scatter")


def compare_runs(a: Run, b: Run) -> None:
    """Run A's student against run B's, on the test rooms both recorded."""
    fa, fb = a.final_metrics(), b.final_metrics()
    st.dataframe(pd.DataFrame([{"metric": m, "run A": fa.get(f"test/student_{m}"), "run B": fb.get(f"test/student_{m}")}
                               for m in METRICS]), hide_index=True, key="echo_rr_table")
    ra, rb = _last_test(a), _last_test(b)
    if ra.empty or rb.empty or "student_rmse" not in ra or "student_rmse" not in rb:
        st.info("Both runs need per-room test rows (written at the last test pass).")
        return
    both = ra[["instance_id", "student_rmse"]].merge(rb[["instance_id", "student_rmse"]], on="instance_id",
                                                     suffixes=("_a", "_b"))
    st.plotly_chart(room_error_scatter(both["student_rmse_a"], both["student_rmse_b"], both["instance_id"],
                                       "run A student RMSE (m)", "run B student RMSE (m)",
                                       f"depth RMSE per test room, run A vs run B (n={len(both)})"),
                    key="echo_rr_scatter")
