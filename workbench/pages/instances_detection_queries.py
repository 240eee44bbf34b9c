"""The Instances view of detection runs that distil through feature maps rather than weights:
UniKD (rows with ``set_total``: the set loss of the frozen query extractor per image, and one
row per teacher box with the query matched to it) and the 1×1-adapter feature imitation
(``mimic_mse`` per image). UniKD runs also show where each query looks (``query_attention``
artifacts: after stage 1 on the teacher's maps, at the end on the student's).
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from kd_engine.store import Run
from workbench import components as ui
from workbench.figures.query_attention import query_attention_figure

LOSSES = {"set_total": "UniKD set loss", "embed_mse": "UniKD embedding MSE", "mimic_mse": "feature MSE (1×1 adapter)"}


def handles(frame: pd.DataFrame) -> bool:
    return any(c in frame and frame[c].notna().any() for c in ("set_total", "mimic_mse"))


def _losses_section(images: pd.DataFrame, epoch: int) -> None:
    shown = [c for c in LOSSES if c in images and images[c].notna().any()]
    for col, key in zip(st.columns(len(shown)), shown):
        col.metric(f"mean {LOSSES[key]}", f"{images[key].mean():.4f}")
    for key in shown:
        st.plotly_chart(px.histogram(images, x=key, nbins=40, title=f"{LOSSES[key]} per image, epoch {epoch}"),
                        key=f"q_hist_{key}")


def _matches_section(boxes: pd.DataFrame) -> None:
    """Which query answers for the teacher's boxes, and how well its box fits them."""
    per_query = boxes.groupby("query").agg(matched=("instance_id", "size"), mean_iou=("match_iou", "mean")).reset_index()
    left, right = st.columns(2)
    left.plotly_chart(px.bar(per_query, x="query", y="matched", title="teacher boxes matched to each query"),
                      key="q_matched")
    right.plotly_chart(px.bar(per_query, x="query", y="mean_iou", range_y=[0, 1],
                              title="mean IoU of the matched query's box with the teacher's"), key="q_iou")


def _attention_section(run: Run, boxes: pd.DataFrame, names: list[str]) -> None:
    index = run.artifacts("query_attention")
    if index.empty:
        st.caption("No query attention maps recorded.")
        return
    roles = index["role"].tolist()
    role = st.radio("Extractor reading", roles, horizontal=True, key="q_role",
                    format_func=lambda r: {"teacher": "the teacher's maps (after stage 1)",
                                           "student": "the student's adapted maps (end of training)"}.get(r, r))
    row = index[index["role"] == role].iloc[-1]
    meta = json.loads(row["meta"] or "{}")
    ids = [int(i) for i in meta.get("instance_ids", [])]
    if not ids:
        return
    image_id = st.selectbox("Probe image", ids, key="q_image")
    k = ids.index(image_id)
    attention = ui.cached_artifact(str(run.run_dir), row["name"])[k]
    images = ui.cached_images(str(run.run_dir), (image_id,))
    if image_id not in images:
        st.info("This run has no image bank to draw the probe image from.")
        return
    mine = boxes[boxes["instance_id"] == image_id] if len(boxes) else boxes
    teacher = mine[["x0", "y0", "x1", "y1"]].to_numpy(dtype=float) if len(mine) else np.zeros((0, 4))
    fig = query_attention_figure(ui.display_image(images[image_id]), attention, meta["shapes"], meta["boxes"][k],
                                 meta["scores"][k], meta["labels"][k], names[1:] if names[:1] == ["background"] else names,
                                 teacher, title=f"image {image_id}: each query's attention and box ({role} maps)")
    st.plotly_chart(fig, key="q_attention", width="content")


def render(run: Run, split: str, epoch: int, frame: pd.DataFrame, names: list[str]) -> None:
    """Per-image losses, the Hungarian matches per query and the attention maps of one epoch."""
    is_box = frame["query"].fillna(-1) >= 0 if "query" in frame else pd.Series(False, frame.index)
    images, boxes = frame[~is_box], frame[is_box]
    st.subheader(f"Distillation losses per image, epoch {epoch}")
    _losses_section(images, epoch)
    if len(boxes):
        st.subheader("Hungarian matches of the teacher's boxes")
        _matches_section(boxes)
    st.subheader("Query attention maps")
    _attention_section(run, boxes, names)
    st.subheader("Rows of this epoch")
    shown = frame.drop(columns=[c for c in frame if frame[c].isna().all()])
    st.dataframe(shown.head(2000), hide_index=True, key="q_table")
