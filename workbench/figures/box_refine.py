"""Figures of box-refinement runs: one image with each object's true, noisy and pseudo box (and,
optionally, the scored proposals of its bag coloured by merge weight), and the per-object IoU of
the pseudo box against that of the noisy box.

Plain functions of arrays and DataFrames, shared by the dashboard's Instances page and the
notebooks. Object frames carry ``label`` and ``<kind>_x0 .. <kind>_y1`` for kind in true, noisy,
pseudo (the box_refine task's rows).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.figures.detection import BOX_COLUMNS, _rgb, weight_colors

__all__ = ["BOX_STYLES", "refined_boxes_figure", "iou_gain_scatter"]

# kind -> (colour, dash): true green, noisy red dashed, pseudo blue
BOX_STYLES = {"true": ("rgb(0, 160, 60)", "solid"), "noisy": ("rgb(220, 40, 40)", "dash"),
              "pseudo": ("rgb(30, 90, 230)", "solid")}


def _box(frame_row, kind: str) -> list[float]:
    return [float(frame_row[f"{kind}_{c}"]) for c in BOX_COLUMNS]


def refined_boxes_figure(image: np.ndarray, objects: pd.DataFrame, class_names: Sequence[str] | None = None,
                         bags: np.ndarray | None = None, title: str | None = None) -> go.Figure:
    """``image`` (H, W) with, per row of ``objects``, its true (green), noisy (red, dashed) and
    pseudo (blue) box; ``bags`` (len(objects), P, ≥5: x0, y0, x1, y1, weight, ...) adds each
    bag's proposals as thin boxes coloured by their weight within the bag (Viridis)."""
    rgb = _rgb(image)
    h, w = rgb.shape[:2]
    fig = go.Figure(go.Image(z=rgb.tolist(), x0=0.5, y0=0.5, hoverinfo="skip"))
    if bags is not None and len(bags):
        share = bags[..., 4] / np.clip(bags[..., 4].sum(1, keepdims=True), 1e-12, None)
        colors = weight_colors(share.ravel().tolist(), cmin=0.0, cmax=float(share.max()))
        for (x0, y0, x1, y1), color in zip(bags[..., :4].reshape(-1, 4), colors):
            fig.add_shape(type="rect", x0=x0, y0=y0, x1=x1, y1=y1, line={"color": color, "width": 1}, opacity=0.6)
    for kind, (color, dash) in BOX_STYLES.items():
        xs, ys, text = [], [], []
        for _, row in objects.iterrows():
            x0, y0, x1, y1 = _box(row, kind)
            fig.add_shape(type="rect", x0=x0, y0=y0, x1=x1, y1=y1, line={"color": color, "width": 2, "dash": dash})
            label = int(row["label"])
            name = class_names[label] if class_names and 0 <= label < len(class_names) else str(label)
            iou = row.get(f"{kind}_iou", np.nan) if kind != "true" else 1.0
            xs.append(x0)
            ys.append(y0)
            text.append(f"{kind} box of object {int(row['instance_id'])} ({name})<br>IoU to true {iou:.3f}")
        fig.add_scatter(x=xs, y=ys, mode="markers", name=kind, text=text, hoverinfo="text",
                        marker={"color": color, "size": 7, "symbol": "square"})
    fig.update_xaxes(range=[0, w], showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(range=[h, 0], showticklabels=False, showgrid=False, zeroline=False, scaleanchor="x")
    fig.update_layout(title=title, template="plotly_white", height=420, margin={"l": 10, "r": 10, "t": 50, "b": 10},
                      legend={"orientation": "h"})
    return fig


def iou_gain_scatter(objects: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Per object, the pseudo box's IoU to the true box against the noisy box's (above the
    diagonal: the method improved the box)."""
    fig = go.Figure(go.Scattergl(x=objects["noisy_iou"], y=objects["pseudo_iou"], mode="markers",
                                 marker={"size": 4, "opacity": 0.5}, text=objects["instance_id"].astype(int).astype(str),
                                 hovertemplate="object %{text}<br>noisy %{x:.3f}<br>pseudo %{y:.3f}<extra></extra>"))
    fig.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line={"dash": "dot", "color": "grey"})
    fig.update_layout(title=title, xaxis_title="IoU(noisy, true)", yaxis_title="IoU(pseudo, true)",
                      template="plotly_white", height=380, xaxis={"range": [0, 1]}, yaxis={"range": [0, 1]})
    return fig
