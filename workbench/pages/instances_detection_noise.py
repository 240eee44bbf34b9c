"""Does AID find the bad labels? The Instances page's view for detection runs whose training
labels carry the scene generator's injected noise (records with ``label_noise`` / ``noisy``).

Per epoch, the AUROC of 1 − w against "this image has a corrupted annotation" (0.5 is chance),
then two galleries at the selected epoch: the corrupted images AID weighted lowest (what it
caught) and the clean images it weighted lowest (its false alarms), with their GT boxes.
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from kd_engine.store import Run
from kd_engine.weighting.aid_report import image_weights, noise_auroc, weight_spread
from workbench import components as ui
from workbench.figures import detection_gallery

COLUMNS = ("epoch", "instance_id", "level", "gt", "weight", "aid_weight", "label_noise", "noisy")


def auroc_figure(curve: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    fig.add_scatter(x=curve["epoch"].tolist(), y=curve["auroc_image"].tolist(), mode="lines+markers", name="per image")
    if "auroc_box" in curve and curve["auroc_box"].notna().any():
        fig.add_scatter(x=curve["epoch"].tolist(), y=curve["auroc_box"].tolist(), mode="lines+markers", name="per GT box")
    fig.add_hline(y=0.5, line_dash="dot", annotation_text="chance")
    fig.update_layout(title={"text": "AUROC of 1 − w against the injected label noise, per epoch"},
                      xaxis_title="epoch", yaxis_title="AUROC", yaxis_range=[0, 1])
    return fig


def render_noise(run: Run, split: str, epoch: int, boxes: pd.DataFrame | None, names: list[str]) -> None:
    """Shown only for training rows that record label noise."""
    known = set(run.instance_columns())
    if split != "train" or "label_noise" not in known:
        return
    cols = tuple(c for c in COLUMNS if c in known)
    rows = ui.cached_instances(str(run.run_dir), ui.data_token(run), split, None, cols)
    rows = rows.dropna(subset=["weight"])
    if rows.empty or not (rows["label_noise"] > 0).any():  # clean labels: nothing to find
        return
    st.subheader("Does AID find the corrupted labels?")
    curve = noise_auroc(rows)
    now = curve[curve["epoch"] == epoch]
    if now.empty:
        return
    now = now.iloc[0]
    spread = weight_spread(image_weights(rows[rows["epoch"] == epoch])["w"])
    for col, (label, value) in zip(st.columns(4), (
            ("AUROC (images)", f"{now['auroc_image']:.3f}"), ("corrupted images", str(int(now['n_noisy']))),
            ("clean images", str(int(now['n_clean']))), ("w p5 / p95", f"{spread['p5']:.3f} / {spread['p95']:.3f}"))):
        col.metric(label, value)
    st.plotly_chart(auroc_figure(curve), key="det_noise_auroc")
    per_image = image_weights(rows[rows["epoch"] == epoch]).set_index("instance_id")
    k = 6
    for noisy, title in ((True, "Corrupted images with the lowest weight (caught)"),
                         (False, "Clean images with the lowest weight (false alarms)")):
        part = per_image[per_image["noisy"] == noisy]["w"].sort_values(kind="stable").head(k)
        if part.empty:
            st.caption(f"{title}: none at this epoch.")
            continue
        images = ui.cached_images(str(run.run_dir), tuple(int(i) for i in part.index))
        ordered = {int(i): images[int(i)] for i in part.index if int(i) in images}
        if not ordered:
            st.caption(f"{title}: no stored images.")
            continue
        fig = detection_gallery(ordered, boxes, part, class_names=names, ncols=min(k, 6), cmin=0.0, cmax=1.0,
                                title=title)
        st.plotly_chart(fig, key=f"det_noise_{noisy}", width="content")
