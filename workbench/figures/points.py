"""Figures of point-cloud runs: one scene as Plotly 3-D scatters coloured by the true classes and
by each role's (matched) prediction side by side, a top-down view of the same, and a matched
confusion matrix. Plain functions of arrays, so the dashboard and the notebooks draw the same
panels. A label of −1 (no prediction: e.g. a point with no 2-D teacher feature) is grey."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.colors as pcolors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["class_colours", "confusion_heatmap", "point_cloud_panels", "top_down_panels"]

NO_LABEL = "rgb(190, 190, 190)"


def class_colours(labels: np.ndarray, num_classes: int) -> list[str]:
    """One colour per point: plotly's qualitative palette by class, grey for −1."""
    palette = pcolors.qualitative.Plotly
    return [palette[int(v) % len(palette)] if 0 <= v < num_classes else NO_LABEL for v in np.asarray(labels)]


def _hover(labels: np.ndarray, class_names: Sequence[str]) -> list[str]:
    return [class_names[int(v)] if 0 <= v < len(class_names) else "none" for v in np.asarray(labels)]


def point_cloud_panels(xyz: np.ndarray, panels: Mapping[str, np.ndarray], class_names: Sequence[str],
                       title: str | None = None, size: float = 2.0) -> go.Figure:
    """One 3-D scatter of the points ``xyz`` (N, 3) per panel (``{name: labels (N,)}``), side by
    side with their cameras linked by equal aspect; each trace's name is its panel's name."""
    n = max(len(panels), 1)
    fig = make_subplots(rows=1, cols=n, specs=[[{"type": "scene"}] * n], subplot_titles=list(panels),
                        horizontal_spacing=0.01)
    k = len(class_names)
    for col, (name, labels) in enumerate(panels.items(), start=1):
        fig.add_trace(go.Scatter3d(x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], mode="markers", name=name,
                                   marker={"size": size, "color": class_colours(labels, k)},
                                   text=_hover(labels, class_names), hoverinfo="text", showlegend=False), 1, col)
    fig.update_scenes(aspectmode="data", xaxis_visible=False, yaxis_visible=False, zaxis_visible=False,
                      camera={"eye": {"x": 1.4, "y": 1.4, "z": 1.0}})
    fig.update_layout(title=title, height=380, margin={"l": 0, "r": 0, "t": 60, "b": 0}, template="plotly_white")
    return fig


def top_down_panels(xyz: np.ndarray, panels: Mapping[str, np.ndarray], class_names: Sequence[str],
                    title: str | None = None) -> go.Figure:
    """The same panels seen from above (x, y; higher points drawn last, so on top)."""
    order = np.argsort(xyz[:, 2])
    n = max(len(panels), 1)
    fig = make_subplots(rows=1, cols=n, subplot_titles=list(panels), horizontal_spacing=0.02)
    for col, (name, labels) in enumerate(panels.items(), start=1):
        fig.add_trace(go.Scattergl(x=xyz[order, 0], y=xyz[order, 1], mode="markers", name=name, showlegend=False,
                                   marker={"size": 4, "color": class_colours(np.asarray(labels)[order], len(class_names))},
                                   text=_hover(np.asarray(labels)[order], class_names), hoverinfo="text"), 1, col)
        fig.update_yaxes(scaleanchor=f"x{col if col > 1 else ''}", row=1, col=col)
    fig.update_layout(title=title, height=340, margin={"l": 10, "r": 10, "t": 60, "b": 10}, template="plotly_white")
    return fig


def confusion_heatmap(confusion: np.ndarray, class_names: Sequence[str], title: str | None = None) -> go.Figure:
    """Rows: true class; columns: matched predicted class; cells: share of the true class's points."""
    c = np.asarray(confusion, dtype=float)
    share = c / np.maximum(c.sum(1, keepdims=True), 1)
    fig = go.Figure(go.Heatmap(z=share.tolist(), x=list(class_names), y=list(class_names), zmin=0, zmax=1,
                               colorscale="Blues", text=np.round(share, 2).tolist(), texttemplate="%{text}"))
    fig.update_yaxes(autorange="reversed", title="true class")
    fig.update_xaxes(title="matched prediction")
    fig.update_layout(title=title, height=360, template="plotly_white", margin={"t": 60})
    return fig
