"""Instances view of BCKD runs (detection rows carrying ``disc_c<label>`` columns): the per-class
discrepancy weights |σ(t_c) − σ(s_c)| that scale BCKD's binary KD, averaged per image × FPN level.

What a reader should be able to see: which classes and levels the student still disagrees with
the teacher on (the heatmap over all images), for which images (the ranking and the gallery of
the images with the largest and smallest mean weight, GT boxes drawn), one image's own
level × class weights, and how the weights shrink over training (the curves).
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from kd_engine.store import Run, StoreError
from workbench import components as ui
from workbench.figures import boxes_frame, class_weight_curves, class_weight_heatmap, detection_gallery, disc_columns

SHOWN = ("instance_id", "level", "box_weight", "kd_cls", "kd_box", "student_loss")


def categories(run: Run, names: list[str]) -> list[str]:
    """Class names by label 1..K (detection labels; 0 is background)."""
    cats = run.meta().get("category_names")
    return [str(c) for c in cats] if cats else [n for n in names if n != "background"]


def image_ranking(rows: pd.DataFrame, cols: list[str]) -> pd.Series:
    """Each image's mean discrepancy weight over its levels and classes, ascending."""
    return rows.groupby("instance_id")[cols].mean().mean(1).sort_values(kind="stable")


def render(run: Run, split: str, epoch: int, frame: pd.DataFrame, names: list[str]) -> None:
    cols = disc_columns(frame)
    rows = frame[frame["level"] >= 0] if "level" in frame else frame
    rows = rows.dropna(subset=cols, how="all")
    if rows.empty:
        st.info("No discrepancy weights on this split: BCKD records them for training images.")
        return
    cats = categories(run, names)
    st.subheader(f"BCKD's per-class discrepancy weights at epoch {epoch}")
    st.caption("Each (location, class) logit's binary KD term is scaled by |σ(t_c) − σ(s_c)|; recorded as the "
               "mean over an FPN level's locations, per image. The box term's weight is max_c |σ(t_c) − σ(s_c)| "
               "(column box_weight).")
    for col, (c, value) in zip(st.columns(len(cols)), rows[cols].mean().items()):
        col.metric(f"mean weight, {cats[int(c[6:]) - 1] if int(c[6:]) <= len(cats) else c}", f"{value:.4f}")
    st.plotly_chart(class_weight_heatmap(rows, cats, f"mean weight per level and class, all images (epoch {epoch})"),
                    key="bckd_heat_all")
    ranked = image_ranking(rows, cols)
    image = st.selectbox("Image (highest mean weight first)", [int(i) for i in ranked.index[::-1]], key="bckd_image")
    one = rows[rows["instance_id"] == image]
    st.plotly_chart(class_weight_heatmap(one, cats, f"image #{image}: weight per level and class (epoch {epoch})"),
                    key="bckd_heat_one")
    try:
        boxes = boxes_frame(ui.cached_artifact(str(run.run_dir), "gt_boxes"))
    except StoreError:
        boxes = None
    k = min(6, len(ranked))
    for title, part in (("Largest mean discrepancy weight", ranked.tail(k).iloc[::-1]),
                        ("Smallest mean discrepancy weight", ranked.head(k))):
        images = ui.cached_images(str(run.run_dir), tuple(int(i) for i in part.index))
        if not images:
            st.info("This run has no image bank.")
            break
        shown = {int(i): images[int(i)] for i in part.index if int(i) in images}
        st.plotly_chart(detection_gallery(shown, boxes, part, class_names=cats, ncols=k, cmin=float(ranked.min()),
                                          cmax=float(ranked.max()), title=title), key=f"bckd_gallery_{title}")
    history = ui.cached_instances(str(run.run_dir), ui.data_token(run), split, None, ("epoch", "level", *cols))
    st.plotly_chart(class_weight_curves(history[history["level"] >= 0], cats, "mean weight per class across epochs"),
                    key="bckd_curves")
    st.dataframe(one[[c for c in (*SHOWN, *cols) if c in one]], hide_index=True, key="bckd_table")
