"""The Features and Compare pages on point-cloud runs (meta `task: points`).

A point-cloud run saves, at its last test pass, a few probe scenes (`point_cloud` artifacts named
`points/<split>/<map>`): the points, their true classes, each role's prediction after Hungarian
matching (−1: no prediction) and each role's matched confusion matrix over the split; the final
metrics hold each role's matched mIoU and overall accuracy. These views draw, with the figures of
the Instances page (`instances_points`), where teacher and student disagree point by point, and
two runs' predictions on the same scene.
"""
from __future__ import annotations

import numpy as np
import streamlit as st

from kd_engine.store import Run
from workbench import components as ui
from workbench.figures import confusion_heatmap, point_cloud_panels
from workbench.pages.instances_points import _artifact as stored

AGREEMENT = ["agree", "disagree"]  # the two "classes" of the agreement scatter
METRICS = ("mIoU", "oAcc")


def agreement_labels(teacher: np.ndarray, student: np.ndarray) -> np.ndarray:
    """Per point: 0 where the matched predictions agree, 1 where they differ, −1 (grey) where
    either role made no prediction."""
    teacher, student = np.asarray(teacher), np.asarray(student)
    return np.where((teacher < 0) | (student < 0), -1, (teacher != student).astype(int))


def probe_ids(run: Run, split: str = "test") -> list[int]:
    index = ui.artifact_index(run, "point_cloud")
    index = index[index["name"] == f"points/{split}/xyz"] if not index.empty else index
    return [] if index.empty else [int(i) for i in index["ids"].iloc[0]]


def _scene(run: Run, ids: list[int], key: str) -> int | None:
    if not ids:
        st.info("No probe scenes stored for the test split (they are saved at the run's last test pass).")
        return None
    return int(st.selectbox("Probe scene", ids, key=key))


def _metric_row(columns: dict[str, tuple[dict, str]]) -> None:
    """mIoU and oAcc of each `columns` entry ({label: (final metrics, role)}), side by side."""
    shown = [(f"{label} {m}", final.get(f"test/{role}_{m}")) for label, (final, role) in columns.items() for m in METRICS]
    shown = [(name, value) for name, value in shown if value is not None]
    for col, (name, value) in zip(st.columns(max(len(shown), 1)), shown):
        col.metric(name, f"{value:.4f}")


def _names(run: Run) -> list[str]:
    return [str(c) for c in run.meta().get("class_names") or []]


# -- Features ------------------------------------------------------------------------------------
def features(run: Run) -> None:
    st.subheader("Teacher–student disagreement per point")
    ids = probe_ids(run)
    scene = _scene(run, ids, "points_feat_scene")
    if scene is None:
        return
    k = ids.index(scene)
    teacher, student = stored(run, "points/test/teacher_pred"), stored(run, "points/test/student_pred")
    if teacher is None or student is None:
        st.info("This run stored no teacher prediction to compare the student with.")
        return
    labels = agreement_labels(teacher[k], student[k])
    both = labels >= 0
    share = float(labels[both].mean()) if both.any() else float("nan")
    st.metric("points where teacher and student disagree", f"{share:.4f}")
    st.caption(f"{int((labels == 1).sum())} of {int(both.sum())} points with both predictions (after each role's "
               f"Hungarian matching); grey: a point either role left unlabelled.")
    st.plotly_chart(point_cloud_panels(stored(run, "points/test/xyz")[k], {"teacher vs student": labels}, AGREEMENT,
                                       title=f"scene #{scene}: agree / disagree per point"), key="points_feat_3d")
    names = _names(run)
    for col, role in zip(st.columns(2), ("teacher", "student")):
        confusion = stored(run, f"points/test/{role}_confusion")
        if confusion is not None:
            col.plotly_chart(confusion_heatmap(confusion, names, title=f"{role}: matched confusion (test)"),
                             key=f"points_feat_confusion_{role}")


# -- Compare -------------------------------------------------------------------------------------
def compare(run: Run) -> None:
    """Teacher against student within one point-cloud run."""
    final = run.final_metrics()
    _metric_row({r: (final, r) for r in ("teacher", "student")})
    ids = probe_ids(run)
    scene = _scene(run, ids, "points_cmp_scene")
    if scene is None:
        return
    k = ids.index(scene)
    panels = {f"{r} prediction": p[k] for r in ("teacher", "student")
              if (p := stored(run, f"points/test/{r}_pred")) is not None}
    st.plotly_chart(point_cloud_panels(stored(run, "points/test/xyz")[k], panels, _names(run),
                                       title=f"scene #{scene}: teacher and student (matched clusters)"),
                    key="points_cmp_3d")


def compare_runs(a: Run, b: Run) -> None:
    """One point-cloud run's student against another's on a probe scene both stored."""
    fa, fb = a.final_metrics(), b.final_metrics()
    if "test/student_mIoU" not in fa or "test/student_mIoU" not in fb:
        st.info("Both runs need final matched metrics on the test split: pick two finished point-cloud runs.")
        return
    _metric_row({"A student": (fa, "student"), "B student": (fb, "student")})
    ia, ib = probe_ids(a), probe_ids(b)
    scene = _scene(a, [i for i in ia if i in ib], "points_rr_scene")
    if scene is None:
        return
    xa, xb = stored(a, "points/test/xyz")[ia.index(scene)], stored(b, "points/test/xyz")[ib.index(scene)]
    if xa.shape != xb.shape or not np.allclose(xa, xb):
        st.warning(f"Scene #{scene} differs between the runs (different data settings): each run's prediction "
                   "is drawn on its own points.")
    pa = stored(a, "points/test/student_pred")[ia.index(scene)]
    pb = stored(b, "points/test/student_pred")[ib.index(scene)]
    names = _names(a)
    left, right = st.columns(2)
    left.plotly_chart(point_cloud_panels(xa, {"A student": pa}, names, title=f"A: scene #{scene}"), key="points_rr_a")
    right.plotly_chart(point_cloud_panels(xb, {"B student": pb}, names, title=f"B: scene #{scene}"), key="points_rr_b")
    if xa.shape == xb.shape and np.allclose(xa, xb):
        st.caption(f"The students' matched labels agree on {float((pa == pb).mean()):.1%} of the scene's points.")

