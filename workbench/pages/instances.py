"""Instances: the per-instance distillation weights the trainer actually used.

Only one epoch of one split is read at a time (an indexed query), so the page stays fast on runs
with millions of instance records; trajectories read just the chosen instances.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from kd_engine.store import Run
from workbench import components as ui
from workbench.pages import (dense_views, harmonization_views, instances_anomaly, instances_bev, instances_box_refine,
                             instances_detection, instances_diagnosis, instances_echo, instances_generation,
                             instances_image_text, instances_incremental, instances_points, segments_views)
from workbench.figures import image_gallery, weight_histogram, weight_scatter, weight_trajectories

TABLE_ROWS = 2000


def epoch_frame(run: Run, split: str, epoch: int) -> pd.DataFrame:
    return ui.cached_instances(str(run.run_dir), ui.data_token(run), split, int(epoch))


def weights_section(frame: pd.DataFrame, names: list[str], epoch: int) -> None:
    if frame["weight"].notna().sum() == 0:
        st.info("No weights on this split: weights are recorded for training instances of "
                "distillation runs (a run trained from scratch has none).")
        return
    weights = frame["weight"].astype(float)
    cols = st.columns(4)
    for col, (label, value) in zip(cols, (("mean weight", weights.mean()), ("std", weights.std()),
                                          ("min", weights.min()), ("max", weights.max()))):
        col.metric(label, f"{value:.4f}")
    if weights.nunique() == 1:
        st.caption("Every instance has the same weight (uniform weighting).")
    st.plotly_chart(weight_histogram(frame, title=f"weights at epoch {epoch} (n={len(frame)})"),
                    key="inst_hist")
    left, right = st.columns(2)
    for col, loss in ((left, "teacher_loss"), (right, "student_loss")):
        if frame[loss].notna().any():
            col.plotly_chart(weight_scatter(frame, x=loss, class_names=names), key=f"inst_scatter_{loss}")
        else:
            col.info(f"No {loss} recorded on this split.")


def default_ids(frame: pd.DataFrame, n: int = 3) -> list[int]:
    ranked = frame.dropna(subset=["weight"]).sort_values("weight")
    if ranked.empty:
        return frame["instance_id"].head(n * 2).astype(int).tolist()
    ids = ranked["instance_id"].head(n).tolist() + ranked["instance_id"].tail(n).tolist()
    return list(dict.fromkeys(int(i) for i in ids))


def trajectories_section(run: Run, split: str, frame: pd.DataFrame) -> None:
    text = st.text_input("Instance ids (comma separated; default: the 3 lowest and 3 highest weighted)",
                         value=", ".join(str(i) for i in default_ids(frame)), key="inst_traj_ids")
    try:
        ids = [int(t) for t in text.replace(";", ",").split(",") if t.strip()]
    except ValueError:
        st.error("Instance ids must be integers, separated by commas.")
        return
    if not ids:
        return
    traj = ui.cached_instances(str(run.run_dir), ui.data_token(run), split, None,
                               ("epoch", "instance_id", "weight", "label"), tuple(ids))
    if traj.empty or traj["weight"].notna().sum() == 0:
        st.info("No weights recorded for these instances on this split.")
        return
    st.plotly_chart(weight_trajectories(traj.dropna(subset=["weight"])), key="inst_traj")


# Columns every classification run records; anything else a method put in `per_sample` is one of
# its per-instance decisions (selected flag, pseudo-label, gate value, confidence flag, ...).
STANDARD_COLUMNS = {"instance_id", "label", "split", "epoch", "step", "weight", "teacher_loss", "student_loss",
                    "distill_loss", "teacher_pred", "student_pred", "teacher_conf", "student_conf"}


def decision_columns(frame: pd.DataFrame) -> list[str]:
    """The method-specific per-instance columns of this epoch (numeric, recorded for some rows)."""
    return [c for c in frame.columns if c not in STANDARD_COLUMNS and not c.startswith("term_")
            and pd.api.types.is_numeric_dtype(frame[c]) and frame[c].notna().any()]


def decision_summary(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """For a flag or a small set of values (selected, pseudo-label): count, share and mean losses per
    value; for a continuous one: quartile bins. Shows at a glance what the method's choice tracks."""
    data = frame.dropna(subset=[column])
    values = data[column]
    groups = values if values.nunique() <= 12 else pd.qcut(values, 4, duplicates="drop").astype(str)
    losses = [c for c in ("teacher_loss", "student_loss", "weight") if c in data and data[c].notna().any()]
    table = data.groupby(groups, sort=True).agg(instances=(column, "size"), **{f"mean {c}": (c, "mean") for c in losses})
    table.insert(1, "share", table["instances"] / max(len(data), 1))
    return table.reset_index().rename(columns={column: f"{column} value"})


def decisions_section(frame: pd.DataFrame, names: list[str]) -> bool:
    """What the method decided per instance, next to the teacher's and student's losses."""
    columns = decision_columns(frame)
    if not columns:
        return False
    column = st.selectbox("Per-instance decision", columns, key="inst_decision")
    st.dataframe(decision_summary(frame, column), hide_index=True, key="inst_decision_table")
    left, right = st.columns(2)
    left.plotly_chart(weight_histogram(frame, column=column), key="inst_decision_hist")
    loss = next((c for c in ("teacher_loss", "student_loss") if c in frame and frame[c].notna().any()), None)
    if loss:
        right.plotly_chart(weight_scatter(frame, x=loss, y=column, class_names=names), key="inst_decision_scatter")
    return True


def table_section(frame: pd.DataFrame, names: list[str], run_id: str, epoch: int) -> None:
    cols = st.columns([2, 2, 2, 1])
    classes = cols[0].multiselect("Classes", list(range(len(names))), format_func=lambda k: names[k],
                                  key="inst_classes")
    sort_cols = [c for c in ("weight", "teacher_loss", "student_loss", "distill_loss", "teacher_conf",
                             "student_conf", "instance_id") if c in frame]
    sort_by = cols[1].selectbox("Sort by", sort_cols, key="inst_sort")
    disagree = cols[2].checkbox("Only teacher ≠ student", key="inst_disagree")
    descending = cols[3].toggle("Desc.", value=True, key="inst_desc")
    data = frame
    if classes:
        data = data[data["label"].isin(classes)]
    if disagree and data["teacher_pred"].notna().any():
        data = data[data["teacher_pred"] != data["student_pred"]]
    weights = data["weight"].dropna().astype(float)
    if len(weights) and weights.max() > weights.min():
        low, high = st.slider("Weight range", float(weights.min()), float(weights.max()),
                              (float(weights.min()), float(weights.max())), key="inst_range")
        data = data[data["weight"].isna() | data["weight"].between(low, high)]
    data = data.sort_values(sort_by, ascending=not descending, na_position="last")
    first = ["instance_id", "label", "weight", "teacher_loss", "student_loss", "distill_loss",
             "teacher_pred", "student_pred", "teacher_conf", "student_conf"]
    ordered = [c for c in first if c in data] + [c for c in data if c not in first]
    st.caption(f"{len(data)} instances" + (f" (showing the first {TABLE_ROWS})" if len(data) > TABLE_ROWS else ""))
    st.dataframe(data[ordered].head(TABLE_ROWS), hide_index=True, key="inst_table")
    ui.export_buttons(data[ordered], f"{run_id}_instances_e{epoch}", key="inst_export")


def source_label(sources: dict, instance_id: int) -> str:
    """The file name (or ``split[index]``) an instance came from, else its id."""
    source = sources.get(str(instance_id))
    return source.rsplit("/", 1)[-1] if source else f"#{instance_id}"


def gallery_section(run: Run, frame: pd.DataFrame, names: list[str]) -> None:
    ranked = frame.dropna(subset=["weight"]).sort_values(["weight", "instance_id"])
    if ranked.empty:
        st.info("No weights on this split to rank instances by.")
        return
    k = st.slider("Images per gallery", 4, 16, 8, key="inst_gallery_k")
    sources = run.meta(refresh=False).get("sources") or {}  # instance id -> file path, when recorded
    for title, part in (("Highest weighted", ranked.tail(k).iloc[::-1]), ("Lowest weighted", ranked.head(k))):
        ids = tuple(int(i) for i in part["instance_id"])
        images = ui.cached_images(str(run.run_dir), ids)
        if not images:
            st.info("This run has no image bank (images are stored for datasets up to 50M pixels).")
            return
        rows = [r for _, r in part.iterrows() if int(r["instance_id"]) in images]
        titles = [f"{source_label(sources, int(r['instance_id']))} {ui.class_name(names, r['label'])} "
                  f"w={r['weight']:.3f}" for r in rows]
        st.plotly_chart(image_gallery([ui.display_image(images[int(r["instance_id"])]) for r in rows],
                                      titles, ncols=k, title=title), key=f"inst_gallery_{title}", width="content")


# The Instances view of each task whose rows are not classification's (keyed by the run's `task` meta).
TASK_VIEWS = {
    "detection": instances_detection.render,  # rows per image x FPN level and per GT box
    "anomaly": instances_anomaly.render,  # anomaly scores, kinds and maps instead of weights
    "dense": dense_views.instances,  # rows per image; label maps of probe images
    "generation": instances_generation.render,  # edits: source, target class, timestep, entropy
    "bev": instances_bev.render,  # scenes: heatmaps, disparity and the regions a method selected
    "points": instances_points.render,  # rows per scene; 3-D scatters of probe scenes
    "incremental": instances_incremental.render,  # rows per object: class assignment, ω, distance matrices
    "box_refine": instances_box_refine.render,  # rows per object: noisy, pseudo and true boxes of one image
    "open_vocab_seg": segments_views.instances,  # dense rows + segment assignment maps, matched views
    "image_text": instances_image_text.render,  # rows per pair: ranks, affinity KL; T/S affinity matrices
    "harmonization": harmonization_views.render,  # composite / output / real, relation matrices
    "echo_depth": instances_echo.render,  # rooms: per-azimuth depth maps, query cross-attention
}


def main() -> None:
    st.title("Instances")
    run = ui.open_selected(ui.load_runs())
    if run is None:
        return
    ui.run_banner(run)
    if run.count_instances() == 0:
        st.info("No per-instance records yet: they are written at the end of each epoch "
                "(and only with `record.instances: true`).")
        return
    names = [str(c) for c in run.meta().get("class_names") or []]
    splits = [s for s in ("train", "val", "test") if run.instance_epochs(s)]
    split = st.radio("Split", splits, horizontal=True, key="inst_split")
    epochs = run.instance_epochs(split)
    epoch = epochs[-1] if len(epochs) == 1 else st.select_slider("Epoch", epochs, value=epochs[-1],
                                                                 key=f"inst_epoch_{split}")
    frame = epoch_frame(run, split, epoch)
    view = TASK_VIEWS.get(run.meta().get("task"))
    if view is not None:  # a task with its own rows (per image x level, per pixel map, per edit...)
        view(run, split, epoch, frame, names)
        return
    if not names:
        names = [str(k) for k in range(int(np.nanmax(frame["label"])) + 1)] if len(frame) else []
    st.subheader(f"Weights at epoch {epoch}")
    weights_section(frame, names, epoch)
    st.subheader("The method's per-instance decisions")
    if not decisions_section(frame, names):
        st.caption("This run's method records no per-instance decisions beyond the weight.")
    st.subheader("Highest and lowest weighted instances")
    gallery_section(run, frame, names)
    st.subheader("Weight trajectories across epochs")
    trajectories_section(run, split, frame)
    st.subheader("All instances of this epoch")
    table_section(frame, names, run.run_id, epoch)
    instances_diagnosis.render(run, names, decision_columns(frame))


if __name__ == "__main__":
    ui.guard(main)
