"""Instances page for box-refinement runs (meta `task: box_refine`, e.g. SSD-Det).

Rows are objects: each has a noisy box (what the method was given), a pseudo box (what it
decided) and a true box (known to the generator only), with both IoUs to the true box and the
method's decisions (largest MIL weight of the bag, top-k weight mass, IoU confidence). The page
shows the IoUs of the split, the pseudo-vs-noisy IoU of every object, and one image with its
true, noisy and pseudo boxes; for the test split of a finished run, the scored proposals of each
bag are drawn too, coloured by their merge weight.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st

from kd_engine.store import Run
from workbench import components as ui
from workbench.figures.box_refine import iou_gain_scatter, refined_boxes_figure

TABLE_ROWS = 2000
FIRST_COLUMNS = ["instance_id", "image_id", "label", "noisy_iou", "pseudo_iou", "weight_max", "topk_mass",
                 "confidence_topk", "mil_loss", "spsd_loss", "sisd_loss"]


def stored_bags(run: Run, split: str) -> tuple[np.ndarray, dict[int, int]] | None:
    """The ``bags/<split>`` artifact and object id -> its row, or None when the run has none."""
    frame = run.artifacts("box_bags")
    frame = frame[frame["name"] == f"bags/{split}"] if not frame.empty else frame
    if frame.empty:
        return None
    meta = json.loads(frame["meta"].iloc[0] or "{}")
    return ui.cached_artifact(str(run.run_dir), f"bags/{split}"), {int(o): i for i, o in enumerate(meta["object_ids"])}


def render(run: Run, split: str, epoch: int, frame: pd.DataFrame, names: list[str]) -> None:
    meta = run.meta()
    st.caption(f"Box noise ρ = {meta.get('rho', '?')}; SPSD {'on' if meta.get('spsd') else 'off'}, "
               f"SISD {'on' if meta.get('sisd') else 'off'}; top-{meta.get('topk', '?')} merge of bags of "
               f"{meta.get('bag_size', '?')} proposals. Green: true box; red dashed: noisy box (given); "
               "blue: pseudo box (decided).")
    if "pseudo_iou" not in frame or frame.empty:
        st.info("No object rows for this split and epoch.")
        return
    cols = st.columns(3)
    cols[0].metric("objects", f"{len(frame)}")
    cols[1].metric("mean IoU, noisy boxes", f"{frame['noisy_iou'].mean():.4f}")
    cols[2].metric("mean IoU, pseudo boxes", f"{frame['pseudo_iou'].mean():.4f}",
                   delta=f"{frame['pseudo_iou'].mean() - frame['noisy_iou'].mean():+.4f}")
    st.plotly_chart(iou_gain_scatter(frame, f"IoU to the true box per object, {split} epoch {epoch}"),
                    key="box_gain")

    st.subheader("One image: true, noisy and pseudo boxes")
    gain = (frame["pseudo_iou"] - frame["noisy_iou"]).groupby(frame["image_id"].astype(int)).mean()
    left, right = st.columns([1, 2])
    order = left.radio("Images by pseudo − noisy IoU", ["largest gain", "largest loss"], key="box_order")
    ranked = gain.sort_values(ascending=order == "largest loss").index.tolist()
    image_id = right.selectbox("Image", ranked, format_func=lambda i: f"#{i} (gain {gain[i]:+.3f})", key="box_image")
    objects = frame[frame["image_id"].astype(int) == int(image_id)]
    images = ui.cached_images(str(run.run_dir), (int(image_id),))
    if not images:
        st.info("This run has no image bank.")
        return
    bags = stored_bags(run, split)
    shown = None
    if bags is not None and st.checkbox("Show each bag's scored proposals (colour: merge weight)", value=True,
                                        key="box_bags"):
        array, row_of = bags
        shown = np.stack([array[row_of[int(o)]] for o in objects["instance_id"] if int(o) in row_of]) \
            if any(int(o) in row_of for o in objects["instance_id"]) else None
    st.plotly_chart(refined_boxes_figure(ui.display_image(images[int(image_id)]), objects, names, bags=shown,
                                         title=f"image #{image_id}, {split} epoch {epoch}"), key="box_image_fig")
    st.subheader("All objects of this epoch")
    columns = [c for c in FIRST_COLUMNS if c in frame and frame[c].notna().any()]
    st.dataframe(frame[columns].head(TABLE_ROWS), hide_index=True, key="box_table")
