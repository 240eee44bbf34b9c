"""Instances page for BEV heatmap-detection runs (meta `task: bev`).

Training rows are scenes: the student's and teacher's detection loss, the distillation terms and,
for a method that selects regions (RDD), how many foreground and background regions it kept and
their disparity against all candidates'. Evaluation rows carry each role's loss and its true and
false positives and misses at score ≥ 0.3. For the probe scenes of an evaluation split the page
draws the BEV input, the true, teacher and student heatmaps and the disparity map with the
regions the method selected (saved at the last test pass), and any other per-cell map the method
saved (DistillBEV: foreground and scale masks, the teacher's attention, false-positive regions).
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st

from kd_engine.store import Run
from workbench import components as ui
from workbench.figures import weight_histogram
from workbench.figures.bev import bev_scene_figure
from workbench.figures.bev_masks import method_maps_figure

TABLE_ROWS = 2000
FIRST_COLUMNS = ["instance_id", "n_objects", "student_loss", "teacher_loss", "selected_fg", "selected_bg",
                 "disparity_selected", "disparity_candidates", "disparity", "student_tp", "student_fp",
                 "student_missed"]
TRAIN_VIEWS = ("student_loss", "distill_loss", "disparity_selected", "selected_fg", "fg_cells", "attention_fg_share")
SCENE_MAPS = {"input", "true_heatmap", "teacher_heatmap", "student_heatmap", "heatmap_disparity", "feature_disparity",
              "regions"}  # drawn by bev_scene_figure; any other stored map is a method's own


def metrics_section(run: Run, split: str) -> None:
    final = run.final_metrics() if split == "test" else {}
    shown = {k.split("/", 1)[1]: v for k, v in final.items() if k.startswith(f"{split}/") and "AP" in k}
    if not shown:
        st.caption("Centre-distance AP appears for the test split when the run finishes.")
        return
    for col, (name, value) in zip(st.columns(min(len(shown), 8)), sorted(shown.items())[:8]):
        col.metric(name.replace("_", " "), f"{value:.4f}")


def _artifacts(run: Run, split: str) -> dict[str, str]:
    """{map name: artifact name} of the split's stored BEV maps (and regions)."""
    frame = pd.concat([run.artifacts("bev_map"), run.artifacts("bev_regions")], ignore_index=True)
    prefix = f"bev/{split}/"
    return {n[len(prefix):]: n for n in frame.get("name", pd.Series(dtype=str)) if n.startswith(prefix)}


def scene_section(run: Run, split: str) -> None:
    stored = _artifacts(run, split)
    if "input" not in stored:
        st.info(f"No BEV maps stored for the {split} split (they are saved at the last test pass).")
        return
    meta = json.loads(run.artifacts("bev_map").set_index("name").loc[stored["input"], "meta"] or "{}")
    ids = [int(i) for i in meta.get("instance_ids", [])]
    scene = st.selectbox("Probe scene", ids, key="bev_scene")
    k = ids.index(int(scene))
    load = lambda what: ui.cached_artifact(str(run.run_dir), stored[what])  # noqa: E731
    heatmaps = {role: load(f"{role}_heatmap")[k] for role in ("true", "teacher", "student")
                if f"{role}_heatmap" in stored}
    disparity, label, regions = None, "", None
    if "feature_disparity" in stored:
        disparity, label = load("feature_disparity")[k], "1 − cos (3×3 windows)"
    elif "heatmap_disparity" in stored:
        disparity, label = load("heatmap_disparity")[k], "binary KL of heatmaps"
    if "regions" in stored:
        rows = load("regions")
        regions = rows[rows[:, 0] == k][:, 1:]
    st.plotly_chart(bev_scene_figure(load("input")[k], heatmaps, disparity, regions, disparity_label=label,
                                     title=f"scene #{scene} ({split})"), key="bev_scene_fig")
    extra = {name: load(name)[k] for name in stored if name not in SCENE_MAPS}
    if extra:  # what the method weighs each cell by (DistillBEV's masks and attention)
        st.plotly_chart(method_maps_figure(load("input")[k], extra, meta.get("channels"),
                                           title=f"scene #{scene}: inputs and the method's per-cell maps"),
                        key="bev_method_maps")
    if regions is not None:
        st.caption(f"{len(regions)} regions selected: {int(regions[:, 3].sum())} foreground (green, a window "
                   f"holding a true centre), {int((regions[:, 3] == 0).sum())} background (orange).")
        table = pd.DataFrame(regions, columns=["row", "col", "disparity", "foreground"])
        st.dataframe(table.astype({"row": int, "col": int, "foreground": bool}), hide_index=True, key="bev_regions")


def render(run: Run, split: str, epoch: int, frame: pd.DataFrame, names: list[str]) -> None:
    """The BEV views of one epoch of one split (`frame`: that epoch's rows)."""
    if split == "train":
        st.subheader(f"Training scenes at epoch {epoch}")
        columns = [c for c in TRAIN_VIEWS if c in frame and frame[c].notna().any()]
        for col, column in zip(st.columns(len(columns) or 1), columns):
            col.plotly_chart(weight_histogram(frame, column=column, title=f"{column} (n={len(frame)})"),
                             key=f"bev_train_{column}")
        if "selected_fg" in frame and frame["selected_fg"].notna().any():
            kept = frame[["selected_fg", "selected_bg"]].sum()
            st.caption(f"Regions kept this epoch: {int(kept['selected_fg'])} foreground, "
                       f"{int(kept['selected_bg'])} background; mean disparity of the kept regions "
                       f"{np.nanmean(frame['disparity_selected']):.3f} against "
                       f"{np.nanmean(frame['disparity_candidates']):.3f} over all candidates.")
    else:
        st.subheader(f"Detection on {split}")
        metrics_section(run, split)
        st.subheader("Probe scenes")
        scene_section(run, split)
    st.subheader("All instances of this epoch")
    ordered = [c for c in FIRST_COLUMNS if c in frame] + [c for c in frame if c not in FIRST_COLUMNS]
    data = frame[ordered].dropna(axis=1, how="all")  # training-only columns are empty on evaluation rows
    st.caption(f"{len(data)} scenes" + (f" (showing the first {TABLE_ROWS})" if len(data) > TABLE_ROWS else ""))
    st.dataframe(data.head(TABLE_ROWS), hide_index=True, key="bev_table")
    ui.export_buttons(data, f"{run.run_id}_instances_e{epoch}", key="bev_export")
