"""Instances page for class-incremental runs (meta `task: incremental`, WCBC-IOD).

Rows are per object (an image's cell). On the training split: how each object was assigned a
class (its label, the teacher's confident prediction, or none) by its true kind (old digit,
new digit, empty), the teacher confidences ω that weighted it, and one mosaic with every
cell's decision written under it. On evaluation splits: old / new / harmonic accuracy and the
teacher–student correlation of the old-class distance matrices, accuracy per digit, the class
distance matrices of teacher and student, and one mosaic with both models' predictions.
"""
from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from kd_engine.store import Run
from workbench import components as ui
from workbench.figures import weight_histogram
from workbench.figures.incremental import SOURCE_NAMES, cell_decisions, class_distance_heatmaps

TABLE_ROWS = 2000
FIRST_COLUMNS = ["instance_id", "cell", "digit", "label", "assigned", "source", "omega", "teacher_pred",
                 "student_pred", "within_loss", "kd_loss", "task_loss"]


def kind_of(run: Run, digits: pd.Series) -> pd.Series:
    old = set(run.meta().get("old") or [])
    return digits.map(lambda d: "empty" if d < 0 else "old digit" if int(d) in old else "new digit")


def assignment_section(run: Run, frame: pd.DataFrame) -> None:
    if "source" not in frame or frame["source"].isna().all():
        st.info("This run's method records no class assignment (a run trained on labels alone).")
        return
    table = pd.crosstab(kind_of(run, frame["digit"]).rename("cell holds"),
                        frame["source"].astype(int).map(SOURCE_NAMES).rename("class from"))
    st.dataframe(table.reset_index(), hide_index=True, key="inc_assign_table")
    st.caption("Rows: what the cell truly holds. Columns: where its class came from: `label` (a labelled "
               "new object), `teacher` (an unlabelled cell the frozen teacher called an old digit with "
               "probability ≥ the threshold), `none` (left out of the prototypes and the within-class loss).")
    cols = st.columns(2)
    for col, (name, code) in zip(cols, (("teacher", 2), ("label", 1))):
        part = frame[frame["source"] == code]
        if len(part):
            col.plotly_chart(weight_histogram(part, column="omega", title=f"ω of {name}-assigned cells (n={len(part)})"),
                             key=f"inc_omega_{name}")


def metrics_section(run: Run, split: str) -> None:
    final = run.final_metrics()
    wanted = ("old_acc", "new_acc", "harmonic", "df_corr", "ds_corr")
    shown = [(k, final.get(f"{split}/student_{k}")) for k in wanted if f"{split}/student_{k}" in final]
    if not shown:
        st.caption("Final metrics appear when the run finishes.")
        return
    for col, (name, value) in zip(st.columns(len(shown)), shown):
        col.metric(name.replace("_", " "), f"{value:.3f}")


def per_digit(frame: pd.DataFrame) -> pd.DataFrame:
    truth = frame["digit"].where(frame["digit"] >= 0, 10)
    out = {"cells": frame.groupby("digit").size()}
    for who in ("student", "teacher"):
        if f"{who}_pred" in frame and frame[f"{who}_pred"].notna().any():
            out[f"{who} accuracy"] = (frame[f"{who}_pred"] == truth).groupby(frame["digit"]).mean()
    return pd.DataFrame(out).reset_index()


def mosaic_section(run: Run, frame: pd.DataFrame, split: str) -> None:
    ids = sorted(frame["instance_id"].astype(int).unique().tolist())
    if not ids:
        return
    chosen = st.selectbox("Image", ids, key=f"inc_image_{split}")
    images = ui.cached_images(str(run.run_dir), (int(chosen),))
    if not images:
        st.info("This run has no image bank.")
        return
    rows = frame[frame["instance_id"] == chosen].sort_values("cell")
    st.plotly_chart(cell_decisions(ui.display_image(images[int(chosen)]), rows,
                                   title=f"image #{chosen}: what was decided per cell ({split})"), key=f"inc_mosaic_{split}")


def distances_section(run: Run, split: str) -> None:
    index = ui.artifact_index(run, "class_distances")
    index = index[index["name"] == f"class_distances/{split}"] if not index.empty else index
    if index.empty:
        st.info("Class distance matrices are saved at the last test pass.")
        return
    meta = json.loads(index["meta"].iloc[0] or "{}")
    matrices = ui.cached_artifact(str(run.run_dir), f"class_distances/{split}")
    st.plotly_chart(class_distance_heatmaps(list(matrices), meta.get("roles", []), meta.get("classes", range(10)),
                                            title="feature distances between class means (D_f), true classes"),
                    key="inc_distances")


def render(run: Run, split: str, epoch: int, frame: pd.DataFrame, names: list[str]) -> None:
    """The class-incremental views of one epoch of one split (`frame`: that epoch's rows)."""
    frame = frame.astype({c: float for c in ("digit", "label") if c in frame})
    if split == "train":
        st.subheader(f"Class assignment at epoch {epoch}")
        assignment_section(run, frame)
    else:
        st.subheader(f"Old and new classes on {split}")
        metrics_section(run, split)
        st.dataframe(per_digit(frame), hide_index=True, key="inc_per_digit")
        distances_section(run, split)
    st.subheader("One image")
    mosaic_section(run, frame, split)
    st.subheader("All objects of this epoch")
    ordered = [c for c in FIRST_COLUMNS if c in frame] + [c for c in frame if c not in FIRST_COLUMNS]
    data = frame[ordered]
    st.caption(f"{len(data)} objects" + (f" (showing the first {TABLE_ROWS})" if len(data) > TABLE_ROWS else ""))
    st.dataframe(data.head(TABLE_ROWS), hide_index=True, key="inc_table")
    ui.export_buttons(data, f"{run.run_id}_instances_e{epoch}", key="inc_export")
