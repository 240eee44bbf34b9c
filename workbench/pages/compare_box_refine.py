"""Compare pages for box-refinement runs (meta `task: box_refine`).

A box-refinement run has no separate teacher (SSD-Det distils from its own regressed proposals),
so teacher against student shows the run's noisy and pseudo IoUs instead of a confusion matrix.
Run against run: per shared object, each run's pseudo-box IoU to the true box (above the
diagonal: run B's box is better), and one shared image with both runs' pseudo boxes.
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from kd_engine.store import Run
from workbench import components as ui
from workbench.figures.box_refine import refined_boxes_figure

COLUMNS = ("instance_id", "image_id", "label", "noisy_iou", "pseudo_iou", *(f"{k}_{c}" for k in ("noisy", "pseudo", "true")
                                                                          for c in ("x0", "y0", "x1", "y1")))


def last_epoch(run: Run, split: str) -> pd.DataFrame:
    epoch = run.instance_epochs(split)[-1]
    return ui.cached_instances(str(run.run_dir), ui.data_token(run), split, int(epoch), COLUMNS)


def self_distillation(run: Run) -> None:
    final = run.final_metrics()
    st.info("This run refines boxes by self-distillation: its teacher is its own regressed proposal bag, "
            "not a separate network. Its noisy and pseudo boxes are on the Instances page.")
    shown = {k: v for k, v in final.items() if k.endswith(("pseudo_iou", "noisy_iou"))}
    for col, (name, value) in zip(st.columns(max(1, len(shown))), sorted(shown.items())):
        col.metric(name, f"{value:.4f}")


def render(a: Run, b: Run, split: str) -> None:
    fa, fb = last_epoch(a, split), last_epoch(b, split)
    frame = fa.merge(fb[["instance_id", "pseudo_iou", *(f"pseudo_{c}" for c in ("x0", "y0", "x1", "y1"))]],
                     on="instance_id", suffixes=("_a", "_b"))
    if frame.empty:
        st.warning("The runs share no objects on this split (different data or split seeds).")
        return
    cols = st.columns(3)
    cols[0].metric("mean IoU, noisy boxes", f"{frame['noisy_iou'].mean():.4f}")
    cols[1].metric("mean IoU, run A's pseudo boxes", f"{frame['pseudo_iou_a'].mean():.4f}")
    cols[2].metric("mean IoU, run B's pseudo boxes", f"{frame['pseudo_iou_b'].mean():.4f}")
    fig = go.Figure(go.Scattergl(x=frame["pseudo_iou_a"], y=frame["pseudo_iou_b"], mode="markers",
                                 marker={"size": 4, "opacity": 0.5}))
    fig.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line={"dash": "dot", "color": "grey"})
    fig.update_layout(title=f"pseudo-box IoU to the true box per object, {split}", xaxis_title="run A",
                      yaxis_title="run B", template="plotly_white", height=380)
    st.plotly_chart(fig, key="cmp_box_scatter")
    image_id = st.selectbox("Image", sorted(frame["image_id"].astype(int).unique()), key="cmp_box_image")
    images = ui.cached_images(str(a.run_dir), (int(image_id),))
    objects = frame[frame["image_id"].astype(int) == int(image_id)]
    left, right = st.columns(2)
    for col, suffix, name in ((left, "_a", "run A"), (right, "_b", "run B")):
        shown = objects.rename(columns={f"pseudo_{c}{suffix}": f"pseudo_{c}" for c in ("x0", "y0", "x1", "y1")}
                               | {f"pseudo_iou{suffix}": "pseudo_iou"})
        if images:
            col.plotly_chart(refined_boxes_figure(ui.display_image(images[int(image_id)]), shown,
                                                  title=f"{name}: image #{image_id}"), key=f"cmp_box_{suffix}")
