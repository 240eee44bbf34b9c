"""Compare views of two-tower image–text runs (meta `task: image_text`): teacher against student
within a run, and one run's student against another's. Both show the final zero-shot accuracy and
image→text R@1 and the affinity matrices of the same test batch side by side; within a run, also
each test image's caption rank under the teacher against under the student."""
from __future__ import annotations

import numpy as np
import plotly.express as px
import streamlit as st

from kd_engine.store import Run
from workbench.figures.image_text import affinity_matrices
from workbench.pages.instances_image_text import load_affinities

METRICS = {"zero-shot accuracy": "zero_shot_acc", "image→text R@1": "r1", "mean rank": "mean_rank"}


def _metric_row(run: Run, role: str, label: str) -> None:
    final = run.final_metrics()
    cols = st.columns(len(METRICS))
    for col, (name, key) in zip(cols, METRICS.items()):
        value = final.get(f"test/{role}_{key}")
        col.metric(f"{label} {name}", "—" if value is None else f"{value:.4f}")


def compare(run: Run) -> None:
    """Teacher against student within one run (the teacher's rows exist when the method had one)."""
    for role in ("teacher", "student"):
        _metric_row(run, role, role)
    matrices, captions, _ = load_affinities(run)
    if matrices:
        st.plotly_chart(affinity_matrices(matrices, captions, title="teacher and student cosines of one test batch"),
                        key="cmp_it_affinity")
    frame = run.instances(split="test", columns=["instance_id", "teacher_rank", "student_rank"])
    if {"teacher_rank", "student_rank"} <= set(frame.columns) and frame["teacher_rank"].notna().any():
        fig = px.scatter(frame, x="teacher_rank", y="student_rank", hover_data=["instance_id"], opacity=0.5,
                         log_x=True, log_y=True, template="plotly_white",
                         title="each test image's caption rank: teacher against student (1 = own caption first)")
        st.plotly_chart(fig, key="cmp_it_ranks")
    else:
        st.info("This run has no teacher (trained from scratch): student only.")


def compare_runs(a: Run, b: Run) -> None:
    """Run A's student against run B's, on the same test batch."""
    shown = {}
    for run, label in ((a, "A"), (b, "B")):
        _metric_row(run, "student", f"{label}:")
        matrices, captions, ids = load_affinities(run)
        if "student" in matrices:
            shown[f"{label}: {run.run_id}"] = (matrices["student"], captions, ids)
    if len(shown) == 2:
        (ma, captions, ids_a), (mb, _, ids_b) = shown.values()
        if ids_a != ids_b:
            st.warning("The two runs' affinity batches hold different pairs (other data or split); compare with care.")
        st.plotly_chart(affinity_matrices({k: v[0] for k, v in shown.items()}, captions,
                                          title="students' cosines of one test batch"), key="cmp_it_runs")
        st.caption(f"mean |A − B| over the batch: {float(np.abs(ma - mb).mean()):.4f}")
