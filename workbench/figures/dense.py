"""Figures of dense-prediction runs: an image with its true and predicted label maps, the
teacher-student disparity map, depth maps, and IoU per class.

Plain functions of arrays and DataFrames (like `workbench.figures.runs`), so the dashboard's
Instances, Features and Compare pages and the notebooks draw the same panels. Label maps are
drawn as heatmaps on a discrete colour scale (one colour per class, background black) whose hover
names the class, so a panel's data are the label map itself.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.colors as pcolors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["class_colorscale", "dense_panels", "iou_bars", "iou_frame", "paired_scatter"]

_TEMPLATE = "plotly_white"
_BACKGROUND = "rgb(20, 20, 20)"
MASK_PANELS = ("true", "teacher", "student")


def class_colorscale(num_classes: int) -> list[list]:
    """A discrete colour scale for label maps drawn with zmin = -0.5, zmax = K - 0.5: class 0
    (background) black, the others from plotly's qualitative palettes."""
    palette = pcolors.qualitative.Plotly + pcolors.qualitative.D3 + pcolors.qualitative.Alphabet
    colours = [_BACKGROUND] + [palette[k % len(palette)] for k in range(max(0, num_classes - 1))]
    scale = []
    for k, colour in enumerate(colours):
        scale += [[k / num_classes, colour], [(k + 1) / num_classes, colour]]
    return scale


def _names(mask: np.ndarray, class_names: Sequence[str]) -> list[list[str]]:
    return [[class_names[int(v)] if 0 <= int(v) < len(class_names) else str(int(v)) for v in row] for row in mask]


def dense_panels(maps: Mapping[str, np.ndarray], class_names: Sequence[str], title: str | None = None,
                 disparity_max: float | None = None) -> go.Figure:
    """One row of panels. Names: ``image`` (grey, [0, 1]), ``true`` / ``teacher`` / ``student``
    (label maps on the class colour scale), ``disparity`` (per-pixel KL, its own colour bar from 0
    to ``disparity_max`` or the map's maximum), ``<output>_disparity`` (|teacher − student| of a
    continuous output, 0-1 Inferno), anything else (depth, edge probabilities) on a shared 0-1 Viridis
    scale. Rows are flipped so row 0 of a map is drawn at the top, as in the image."""
    names = list(maps)
    k = len(class_names)
    fig = make_subplots(rows=1, cols=max(1, len(names)), subplot_titles=names, horizontal_spacing=0.03)
    for i, name in enumerate(names, start=1):
        z = np.asarray(maps[name])
        if name in MASK_PANELS:
            trace = go.Heatmap(z=z[::-1].tolist(), zmin=-0.5, zmax=k - 0.5, colorscale=class_colorscale(k),
                               showscale=False, text=_names(z[::-1], class_names), name=name,
                               hovertemplate=f"{name}: %{{text}}<extra></extra>")
        elif name == "disparity":
            top = float(disparity_max) if disparity_max is not None else float(np.nanmax(z)) or 1.0
            trace = go.Heatmap(z=z[::-1].astype(float).tolist(), zmin=0.0, zmax=top, colorscale="Inferno",
                               name=name, colorbar={"title": {"text": "KL"}, "len": 0.8, "thickness": 10},
                               hovertemplate="KL(teacher ‖ student): %{z:.3f}<extra></extra>")
        elif name.endswith("_disparity"):
            trace = go.Heatmap(z=z[::-1].astype(float).tolist(), zmin=0.0, zmax=1.0, colorscale="Inferno",
                               name=name, colorbar={"title": {"text": "|T − S|"}, "len": 0.8, "thickness": 10},
                               hovertemplate="|teacher − student|: %{z:.3f}<extra></extra>")
        elif name == "image":
            trace = go.Heatmap(z=z[::-1].astype(float).tolist(), zmin=0.0, zmax=1.0, colorscale="gray",
                               showscale=False, name=name, hoverinfo="skip")
        else:
            trace = go.Heatmap(z=z[::-1].astype(float).tolist(), zmin=0.0, zmax=1.0, colorscale="Viridis",
                               showscale=False, name=name, hovertemplate=f"{name}: %{{z:.3f}}<extra></extra>")
        fig.add_trace(trace, 1, i)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    for i in range(1, len(names) + 1):  # square pixels in every panel
        fig.update_yaxes(scaleanchor=f"x{i if i > 1 else ''}", row=1, col=i)
    fig.update_layout(title=title, template=_TEMPLATE, height=260, width=max(300, 170 * len(names) + 60),
                      margin={"l": 10, "r": 10, "t": 60 if title else 35, "b": 10})
    return fig


def iou_frame(metrics: Mapping[str, float], split: str, roles: Sequence[str],
              class_names: Sequence[str]) -> pd.DataFrame:
    """Long frame (role, class, IoU) from final metrics named ``<split>/<role>_IoU_<class>``;
    a class a role never predicted nor met has no metric and is left out."""
    rows = []
    for role in roles:
        for name in class_names:
            key = f"{split}/{role}_IoU_{name}"
            if key in metrics:
                rows.append({"role": role, "class": str(name), "IoU": float(metrics[key])})
    return pd.DataFrame(rows, columns=["role", "class", "IoU"])


def iou_bars(frame: pd.DataFrame, title: str | None = None) -> go.Figure:
    """IoU per class, a bar group per class and a colour per role (teacher, student, run A, ...)."""
    fig = go.Figure()
    for i, (role, part) in enumerate(frame.groupby("role", sort=False)):
        fig.add_bar(x=part["class"].tolist(), y=part["IoU"].tolist(), name=str(role),
                    marker_color=pcolors.qualitative.Plotly[i % 10])
    fig.update_layout(title=title or "IoU per class", barmode="group", yaxis_range=[0, 1], yaxis_title="IoU",
                      xaxis_title="class", template=_TEMPLATE, xaxis_type="category")
    return fig


def paired_scatter(frame: pd.DataFrame, x: str, y: str, title: str | None = None,
                   color: str | None = None, diagonal: bool = True) -> go.Figure:
    """One point per image (e.g. the teacher's against the student's mIoU), with the y = x line
    when both axes measure the same thing."""
    data = frame.dropna(subset=[x, y])
    marker = {"size": 6}
    if color and color in data:
        marker.update(color=data[color].astype(float).tolist(), colorscale="Viridis", showscale=True,
                      colorbar={"title": {"text": color}})
    fig = go.Figure()
    fig.add_scattergl(x=data[x].astype(float).tolist(), y=data[y].astype(float).tolist(), mode="markers",
                      marker=marker, customdata=data["instance_id"].astype(int).tolist(), name="images",
                      hovertemplate=f"id %{{customdata}}<br>{x} %{{x:.3f}}<br>{y} %{{y:.3f}}<extra></extra>")
    if diagonal and len(data):
        lo = float(min(data[x].min(), data[y].min()))
        hi = float(max(data[x].max(), data[y].max()))
        fig.add_scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", line={"dash": "dot", "color": "grey"})
    fig.update_layout(title=title or f"{y} vs {x}", xaxis_title=x, yaxis_title=y, template=_TEMPLATE,
                      legend={"orientation": "h", "yanchor": "top", "y": -0.2})
    return fig
