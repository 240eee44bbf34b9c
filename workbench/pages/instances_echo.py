"""Instances page for per-azimuth room prediction runs (meta `task: echo_depth`, SAM and its
baselines).

Training rows are rooms: the task loss and what the method recorded per room (SAM's alignment
loss per layer, direct KD's loss). On the test split: depth RMSE, abs-rel and mIoU of the student
and the teacher, the per-room errors, and for one probe room its plan from above, the depth per
azimuth of the truth, the teacher and the student (polar), and each query aligner's
cross-attention over echo time with the true delays drawn over it.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st

from kd_engine.store import Run
from workbench import components as ui
from workbench.figures import weight_histogram
from workbench.figures.echo import azimuth_depth_polar, echo_attention_map, room_plan

TABLE_ROWS = 2000
FIRST_COLUMNS = ["instance_id", "student_rmse", "teacher_rmse", "student_abs_rel", "student_miou", "align_loss",
                 "direct_loss", "student_loss", "teacher_loss"]
TRAIN_COLUMNS = ("student_loss", "align_loss", "direct_loss", "teacher_loss")


def metrics_section(run: Run, split: str) -> None:
    final = run.final_metrics() if split == "test" else {}
    shown = {k.split("/", 1)[1]: v for k, v in final.items()
             if k.startswith(f"{split}/") and k.rsplit("_", 1)[-1] in ("rmse", "rel", "mIoU")}
    if not shown:
        st.caption("RMSE, abs-rel and mIoU appear when the run finishes its last test pass.")
        return
    for col, (name, value) in zip(st.columns(len(shown)), sorted(shown.items())):
        col.metric(name.replace("_", " "), f"{value:.4f}")


def _stored(run: Run, split: str) -> dict[str, np.ndarray]:
    names = [n for kind in ("azimuth_map", "echo_attention") for n in ui.artifact_index(run, kind).get("name", [])
             if n.startswith(f"echo/{split}/")]
    return {n.rsplit("/", 1)[1]: ui.cached_artifact(str(run.run_dir), n) for n in names}


def room_section(run: Run, split: str, frame: pd.DataFrame) -> None:
    index = ui.artifact_index(run, "azimuth_map")
    index = index[index["name"] == f"echo/{split}/true_depth"] if not index.empty else index
    if index.empty:
        st.info(f"No per-azimuth maps stored for the {split} split (saved at the last test pass for the first "
                "`record.attention_maps` rooms).")
        return
    ids = list(index["ids"].iloc[0])
    maps = _stored(run, split)
    errors = frame.set_index("instance_id")["student_rmse"] if "student_rmse" in frame else pd.Series(dtype=float)
    room = st.selectbox("Room", ids, key="echo_room",
                        format_func=lambda i: f"#{i}" + (f"  (student RMSE {errors[i]:.3f} m)" if i in errors else ""))
    p = ids.index(room)
    depths = {role: maps[f"{key}_depth"][p] for role, key in (("truth", "true"), ("teacher", "teacher"),
                                                              ("student", "student")) if f"{key}_depth" in maps}
    labels = {role: maps[f"{key}_label"][p] for role, key in (("truth", "true"), ("teacher", "teacher"),
                                                              ("student", "student")) if f"{key}_label" in maps}
    names = (run.meta().get("class_names") or ["wall", "obstacle"])
    left, right = st.columns(2)
    left.plotly_chart(azimuth_depth_polar(depths, labels, names, title=f"room #{room}: depth per azimuth (m)"),
                      key="echo_polar")
    geometry = run.artifacts("room_geometry")
    if (geometry["name"] == f"rooms/{split}").any():
        meta = json.loads(geometry[geometry["name"] == f"rooms/{split}"]["meta"].iloc[0] or "{}")
        rows = {int(i): k for k, i in enumerate(meta.get("instance_ids", []))}
        if room in rows:
            plan = ui.cached_artifact(str(run.run_dir), f"rooms/{split}")[rows[room]]
            right.plotly_chart(room_plan(plan, title=f"room #{room} from above"), key="echo_plan")
    stages = sorted(k.split("attention_", 1)[1] for k in maps if k.startswith("attention_"))
    if not stages:
        st.caption("This student has no query aligner (no SAM architecture): no cross-attention to show.")
        return
    max_range = float(run.meta().get("max_range") or 12.0)
    for col, stage in zip(st.columns(len(stages)), stages):
        col.plotly_chart(echo_attention_map(maps[f"attention_{stage}"][p], depths.get("truth"), max_range,
                                            title=f"{stage}: azimuth query x echo time (x: true delay)"),
                         key=f"echo_attention_{stage}")


def attention(run: Run) -> None:
    """The Attention page of an echo run: the query aligners' cross-attention over echo time for one
    probe room of the test split (the image attribution methods do not apply to echo inputs)."""
    epochs = run.instance_epochs("test")
    frame = run.instances(split="test", epoch=max(epochs)) if epochs else pd.DataFrame()
    if frame.empty:
        st.info("No test rooms recorded yet: the cross-attention maps are saved at the last test pass.")
        return
    st.caption("Rooms are heard, not seen: the attention shown is each azimuth query's cross-attention over "
               "the echo-time tokens (SAM's aligner), with the true round-trip delays drawn over it.")
    room_section(run, "test", frame)


def render(run: Run, split: str, epoch: int, frame: pd.DataFrame, names: list[str]) -> None:
    """The echo views of one epoch of one split (`frame`: that epoch's rows)."""
    if split == "train":
        st.subheader(f"Training rooms at epoch {epoch}")
        columns = [c for c in TRAIN_COLUMNS if c in frame and frame[c].notna().any()]
        for col, column in zip(st.columns(len(columns) or 1), columns):
            col.plotly_chart(weight_histogram(frame, column=column, title=f"{column} (n={len(frame)})"),
                             key=f"echo_train_{column}")
    else:
        st.subheader(f"Depth and wall/obstacle per azimuth on {split}")
        metrics_section(run, split)
        st.subheader("One room")
        room_section(run, split, frame)
    st.subheader("All rooms of this epoch")
    ordered = [c for c in FIRST_COLUMNS if c in frame] + [c for c in frame if c not in FIRST_COLUMNS]
    sort = next((c for c in ("student_rmse", "student_loss") if c in frame and frame[c].notna().any()), None)
    data = frame[ordered].sort_values(sort, ascending=False) if sort else frame[ordered]
    st.caption(f"{len(data)} rooms" + (f" (showing the first {TABLE_ROWS})" if len(data) > TABLE_ROWS else ""))
    st.dataframe(data.head(TABLE_ROWS), hide_index=True, key="echo_table")
    ui.export_buttons(data, f"{run.run_id}_instances_e{epoch}", key="echo_export")
