"""Instances page for point-cloud runs (meta `task: points`).

Instances are scenes. Training rows carry what the method recorded per scene (its loss, the
share of points with a 2-D teacher feature as ``weight``, distillation terms, pseudo-label
purity). On an evaluation split the page shows the matched metrics, one probe scene as 3-D
scatters coloured by the true classes and by the teacher's and the student's predictions (after
Hungarian matching; grey: no prediction), the same from above, and the matched confusion matrix;
and, where the method clusters, how many super-voxels each pseudo-label holds.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from kd_engine.store import Run
from workbench import components as ui
from workbench.figures import confusion_heatmap, point_cloud_panels, top_down_panels, weight_histogram

TABLE_ROWS = 2000
ROW_VALUES = ("student_loss", "term_cmd", "term_svc", "weight", "pseudo_purity",
              "moving_labels", "static_labels", "visible_fraction", "distill_loss", "objectness_loss")


def _artifact(run: Run, name: str) -> np.ndarray | None:
    index = ui.artifact_index(run, "point_cloud")
    if index.empty or not (index["name"] == name).any():
        return None
    return ui.cached_artifact(str(run.run_dir), name)


def metrics_section(run: Run, split: str) -> None:
    final = run.final_metrics() if split == "test" else {}
    shown = {k.split("/", 1)[1]: v for k, v in final.items() if k.startswith(f"{split}/")
             and k.split("_", 1)[-1] in ("mIoU", "oAcc")}
    for col, (name, value) in zip(st.columns(max(len(shown), 1)), sorted(shown.items())):
        col.metric(name.replace("_", " "), f"{value:.4f}")


def scene_section(run: Run, split: str, names: list[str]) -> None:
    index = ui.artifact_index(run, "point_cloud")
    index = index[index["name"] == f"points/{split}/xyz"] if not index.empty else index
    if index.empty:
        st.info(f"No probe scenes stored for the {split} split (they are saved at the last test pass).")
        return
    ids = list(index["ids"].iloc[0])
    scene = st.selectbox("Scene", range(len(ids)), format_func=lambda p: f"#{ids[p]}", key="points_scene")
    xyz = _artifact(run, f"points/{split}/xyz")[scene]
    panels = {"truth": _artifact(run, f"points/{split}/true")[scene]}
    for role in ("teacher", "student"):
        pred = _artifact(run, f"points/{split}/{role}_pred")
        if pred is not None:
            panels[f"{role} prediction"] = pred[scene]
    title = f"scene #{ids[scene]}: truth, teacher and student (matched clusters; grey = no 2-D feature)"
    st.plotly_chart(point_cloud_panels(xyz, panels, names, title=title), key="points_3d")
    st.plotly_chart(top_down_panels(xyz, panels, names, title=f"scene #{ids[scene]} from above"), key="points_top")
    for role in ("student", "teacher"):
        confusion = _artifact(run, f"points/{split}/{role}_confusion")
        if confusion is not None:
            st.plotly_chart(confusion_heatmap(confusion, names, title=f"{role}: matched confusion over the {split} split"),
                            key=f"points_confusion_{role}")


def decisions_section(run: Run) -> None:
    stored = run.artifacts("point_decisions")
    if stored.empty:
        return
    pseudo = ui.cached_artifact(str(run.run_dir), "points/pseudo_labels")
    counts = pd.Series(pseudo[pseudo >= 0].ravel()).value_counts().sort_index()
    st.subheader("Pseudo-labels (last re-clustering)")
    st.caption(f"Super-voxels of the {pseudo.shape[0]} training scenes per pseudo-label (primitive); "
               "every point of a super-voxel takes its super-voxel's label.")
    st.bar_chart(counts.rename("super-voxels"))


def render(run: Run, split: str, epoch: int, frame: pd.DataFrame, names: list[str]) -> None:
    """The point-cloud views of one epoch of one split (`frame`: that epoch's per-scene rows)."""
    names = names or list(run.meta().get("class_names", []))
    if split == "train":
        st.subheader(f"Training scenes at epoch {epoch}")
        columns = [c for c in ROW_VALUES if c in frame and frame[c].notna().any()]
        for col, column in zip(st.columns(len(columns) or 1), columns):
            col.plotly_chart(weight_histogram(frame, column=column, title=f"{column} (n={len(frame)})"),
                             key=f"points_train_{column}")
        decisions_section(run)
    else:
        st.subheader(f"Unsupervised segmentation on {split}")
        metrics_section(run, split)
        scene_section(run, split, names)
    st.subheader("All scenes of this epoch")
    st.dataframe(frame.head(TABLE_ROWS), hide_index=True, key="points_table")
