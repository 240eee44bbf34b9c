"""Instances page for object-detection runs (meta `task: detection`).

AID weights a detector's distillation per image × FPN level (or per image, level -1, or per GT
box), so one instance is several rows: a level selector filters every view, per-GT rows get
their own view coloured by class, and the gallery draws each image's GT boxes coloured by weight.
The raw AID weight is plotted against the weight used, which differ under the controls (shuffled, constant mean).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from kd_engine.store import Run, StoreError
from workbench import components as ui
from workbench.pages import instances_detection_bckd, instances_detection_queries
from workbench.pages.instances_detection_noise import render_noise
from workbench.figures import (boxes_frame, class_label, detection_gallery, image_weights, weight_histogram,
                               weight_scatter, weight_trajectories)

ALL = -1  # level -1 in the records means "all levels"; as a selection it keeps every level
TABLE_ROWS = 2000
FIRST_COLUMNS = ["instance_id", "level", "gt", "label", "weight", "aid_weight", "teacher_cls", "teacher_box",
                 "teacher_loss", "student_loss", "distill_loss", "term_am", "term_at_ch", "term_at_sp", "term_nl"]


def level_label(level: int) -> str:
    return "all levels" if level < 0 else f"level {level}"


def split_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(image rows, per-GT rows): a GT row has a GT index >= 0 (image rows hold NaN or -1)."""
    frame = frame.copy()
    if "teacher_loss" not in frame or frame["teacher_loss"].isna().all():
        parts = [frame[c] for c in ("teacher_cls", "teacher_box") if c in frame]
        frame["teacher_loss"] = sum(parts) if parts else np.nan
    is_gt = frame["gt"].fillna(-1) >= 0 if "gt" in frame else pd.Series(False, frame.index)
    return frame[~is_gt], frame[is_gt]


def at_level(rows: pd.DataFrame, level: int) -> pd.DataFrame:
    return rows if level == ALL or "level" not in rows else rows[rows["level"] == level]


def grouped(rows: pd.DataFrame, names: list[str], by_class: bool) -> pd.DataFrame:
    """A string `group` column for the scatters: the class of GT rows, the level of image rows."""
    if by_class:
        return rows.assign(group=[class_label(names, k) for k in rows["label"]])
    levels = rows["level"] if "level" in rows else pd.Series(ALL, rows.index)
    return rows.assign(group=[level_label(int(k)) if pd.notna(k) else "?" for k in levels])


def weights_section(rows: pd.DataFrame, epoch: int, what: str, legend: str) -> None:
    weights = rows["weight"].astype(float)
    for col, (label, value) in zip(st.columns(4), (("mean weight", weights.mean()), ("std", weights.std()),
                                                   ("min", weights.min()), ("max", weights.max()))):
        col.metric(label, f"{value:.4f}")
    st.plotly_chart(weight_histogram(rows, title=f"weights at epoch {epoch}, {what} (n={weights.notna().sum()})"),
                    key="det_hist")
    left, right = st.columns(2)
    for col, loss in ((left, "teacher_loss"), (right, "student_loss")):
        if loss in rows and rows[loss].notna().any():
            fig = weight_scatter(rows, x=loss, label_col="group", title=f"weight vs {loss} ({what})")
            col.plotly_chart(fig.update_layout(legend_title_text=legend), key=f"det_scatter_{loss}")
        else:
            col.info(f"No {loss} recorded for these rows.")


def controls_section(rows: pd.DataFrame, legend: str) -> None:
    """Raw AID weight against the weight used: the diagonal for AID itself, off it for the
    shuffled and constant-scale controls."""
    if "aid_weight" not in rows or rows["aid_weight"].notna().sum() == 0:
        return
    st.subheader("Raw AID weight vs weight used")
    both = rows.dropna(subset=["aid_weight", "weight"])
    same = np.allclose(both["aid_weight"], both["weight"], atol=1e-6)
    st.caption("The weights used are the raw AID weights." if same else
               "The weights used differ from the raw AID weights: a control arm (shuffled or constant scale).")
    fig = weight_scatter(rows, x="aid_weight", y="weight", label_col="group", title="used weight vs raw AID weight")
    lo, hi = float(both[["aid_weight", "weight"]].min().min()), float(both[["aid_weight", "weight"]].max().max())
    fig.add_scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="used = raw", line={"dash": "dot", "color": "grey"})
    st.plotly_chart(fig.update_layout(legend_title_text=legend), key="det_controls")


def gt_boxes(run: Run, gt_rows: pd.DataFrame) -> pd.DataFrame | None:
    """Per-GT rows when recorded (each box has its own weight), else the `gt_boxes` artifact."""
    if len(gt_rows):
        return gt_rows.rename(columns={"instance_id": "image_id"})
    try:
        return boxes_frame(ui.cached_artifact(str(run.run_dir), "gt_boxes"))
    except StoreError:
        return None


def gallery_section(run: Run, ranked: pd.Series, boxes: pd.DataFrame | None, names: list[str]) -> None:
    if ranked.empty:
        st.info("No weights on these rows to rank images by.")
        return
    if boxes is None:
        st.caption("This run recorded no GT boxes (`gt_boxes` artifact or per-GT rows): images only.")
    k = st.slider("Images per gallery", 4, 16, 8, key="det_gallery_k")
    box_w = boxes["weight"].dropna().tolist() if boxes is not None and "weight" in boxes else []
    scale = [*ranked.tolist(), *box_w]
    for title, part in (("Highest weighted images", ranked.tail(k).iloc[::-1]), ("Lowest weighted images",
                                                                                 ranked.head(k))):
        images = ui.cached_images(str(run.run_dir), tuple(int(i) for i in part.index))
        if not images:
            st.info("This run has no image bank (images are stored for datasets up to 50M pixels).")
            return
        ordered = {int(i): images[int(i)] for i in part.index if int(i) in images}
        fig = detection_gallery(ordered, boxes, part, class_names=names, ncols=min(k, 8), cmin=min(scale),
                                cmax=max(scale), title=title)
        st.plotly_chart(fig, key=f"det_gallery_{title}", width="content")


def trajectories_section(run: Run, split: str, level: int, ranked: pd.Series) -> None:
    ids_default = list(dict.fromkeys([*ranked.index[:3], *ranked.index[-3:]]))
    text = st.text_input("Image ids (comma separated; default: the 3 lowest and 3 highest weighted)",
                         value=", ".join(str(int(i)) for i in ids_default), key="det_traj_ids")
    try:
        ids = [int(t) for t in text.replace(";", ",").split(",") if t.strip()]
    except ValueError:
        st.error("Image ids must be integers, separated by commas.")
        return
    known = set(run.instance_columns())
    cols = tuple(c for c in ("epoch", "instance_id", "weight", "level", "gt") if c in known)
    traj = ui.cached_instances(str(run.run_dir), ui.data_token(run), split, None, cols, tuple(ids)) if ids else None
    if traj is None or traj.empty or traj["weight"].notna().sum() == 0:
        st.info("No weights recorded for these images on this split.")
        return
    rows = at_level(split_rows(traj)[0], level).dropna(subset=["weight"])
    mean = rows.groupby(["epoch", "instance_id"], as_index=False)["weight"].mean()
    st.plotly_chart(weight_trajectories(mean, title=f"mean weight across epochs ({level_label(level)})"),
                    key="det_traj")


def table_section(rows: pd.DataFrame, gt_rows: pd.DataFrame, run_id: str, epoch: int) -> None:
    data = rows
    if len(gt_rows) and st.checkbox("Include per-GT rows", key="det_table_gt"):
        data = pd.concat([rows, gt_rows], ignore_index=True)
    data = data.sort_values(["weight", "instance_id"], ascending=[False, True], na_position="last")
    data = data.drop(columns=[c for c in data if c != "weight" and data[c].isna().all()])  # e.g. gt on image rows
    ordered = [c for c in FIRST_COLUMNS if c in data] + [c for c in data if c not in FIRST_COLUMNS and c != "group"]
    st.caption(f"{len(data)} rows" + (f" (showing the first {TABLE_ROWS})" if len(data) > TABLE_ROWS else ""))
    st.dataframe(data[ordered].head(TABLE_ROWS), hide_index=True, key="det_table")
    ui.export_buttons(data[ordered], f"{run_id}_detection_instances_e{epoch}", key="det_export")


def render(run: Run, split: str, epoch: int, frame: pd.DataFrame, names: list[str]) -> None:
    """The detection views of one epoch of one split (`frame`: that epoch's rows)."""
    if instances_detection_queries.handles(frame):  # UniKD / feature imitation: losses, matches, attention
        return instances_detection_queries.render(run, split, epoch, frame, names)
    if instances_detection_bckd.disc_columns(frame):  # BCKD: per-class discrepancy weights, not w
        return instances_detection_bckd.render(run, split, epoch, frame, names)
    image_rows, gt_rows = split_rows(frame)
    if image_rows["weight"].notna().sum() == 0 and gt_rows.empty:
        st.info("No weights on this split: weights are recorded for training images of distillation runs.")
        return
    levels = sorted(int(k) for k in image_rows["level"].dropna().unique() if k >= 0) if "level" in image_rows else []
    left, right = st.columns(2)
    level = ALL
    if levels:
        level = left.radio("FPN level", [ALL, *levels], format_func=level_label, horizontal=True, key="det_level")
    else:
        left.caption("Weights are per image (level -1: one weight for all FPN levels).")
    show_gt = len(gt_rows) > 0 and right.radio("Rows", ["images", "GT boxes"], horizontal=True,
                                                key="det_rows") == "GT boxes"
    selected = at_level(image_rows, level)
    view = grouped(gt_rows, names, True) if show_gt else grouped(selected, names, False)
    what = "GT boxes" if show_gt else ("images × levels" if level == ALL and levels else level_label(level))
    st.subheader(f"Weights at epoch {epoch}")
    legend = "class" if show_gt else "FPN level"
    weights_section(view, epoch, what, legend)
    controls_section(view, legend)
    ranked = pd.Series(image_weights(selected.dropna(subset=["weight"]))).sort_values(kind="stable")
    st.subheader("Highest and lowest weighted images")
    st.caption(f"Image weight: the mean over {level_label(level)}; "
               + ("each box coloured by its own (per-GT) weight." if len(gt_rows) else "boxes coloured by it."))
    gallery_section(run, ranked, gt_boxes(run, gt_rows), names)
    render_noise(run, split, epoch, gt_boxes(run, gt_rows), names)
    st.subheader("Weight trajectories across epochs")
    trajectories_section(run, split, level, ranked)
    st.subheader(f"Rows of this epoch ({level_label(level)})")
    table_section(selected, gt_rows, run.run_id, epoch)
