"""Figures of per-azimuth room prediction (echo_depth runs): depth per azimuth as a polar plot
(truth, teacher, student; obstacle azimuths marked), a query aligner's cross-attention as an
azimuth × echo-time heatmap with the true round-trip delay of each azimuth drawn over it, and
the room seen from above."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

__all__ = ["azimuth_depth_polar", "echo_attention_map", "room_error_scatter", "room_plan"]

ROLE_STYLE = {"truth": ("black", "solid"), "teacher": ("#1f77b4", "dash"), "student": ("#d62728", "solid")}


def _degrees(count: int) -> list[float]:
    return (360.0 * np.arange(count + 1) / count).tolist()  # closed: the last point repeats the first


def azimuth_depth_polar(depths: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray] | None = None,
                        class_names: Sequence[str] = ("wall", "obstacle"), title: str = "depth per azimuth"
                        ) -> go.Figure:
    """Depth (m) against azimuth (0° = +x, counter-clockwise) for each role (``truth``,
    ``teacher``, ``student``); where ``labels`` are given, the azimuths a role calls an obstacle
    are marked on its curve."""
    fig = go.Figure()
    for role, depth in depths.items():
        depth = np.asarray(depth, dtype=float)
        colour, dash = ROLE_STYLE.get(role, ("gray", "dot"))
        theta = _degrees(len(depth))
        fig.add_scatterpolar(r=np.append(depth, depth[0]).tolist(), theta=theta, mode="lines", name=role,
                             line={"color": colour, "dash": dash})
        if labels is not None and role in labels:
            label = np.asarray(labels[role])
            hit = np.flatnonzero(label == 1)
            if len(hit):
                fig.add_scatterpolar(r=depth[hit].tolist(), theta=[theta[i] for i in hit], mode="markers",
                                     name=f"{role}: {class_names[1]}", marker={"color": colour, "size": 7,
                                                                                "symbol": "square"})
    fig.update_layout(title=title, polar={"angularaxis": {"direction": "counterclockwise", "rotation": 0}},
                      template="plotly_white", height=420)
    return fig


def echo_attention_map(attention: np.ndarray, true_depth: np.ndarray | None = None, max_range: float = 12.0,
                       title: str = "cross-attention: azimuth query x echo time") -> go.Figure:
    """(A, N) attention of each azimuth query over the N echo-time tokens. With ``true_depth``
    (A,), each azimuth's true round-trip delay is drawn in token units (N · d / max_range): where
    the attention follows it, the queries read the echo of their own direction."""
    attention = np.asarray(attention, dtype=float)
    a, n = attention.shape
    fig = go.Figure(go.Heatmap(z=attention.tolist(), x=list(range(n)), y=_degrees(a)[:-1], colorscale="Viridis",
                               colorbar={"title": "attention"}))
    if true_depth is not None:
        fig.add_scatter(x=(n * np.asarray(true_depth, dtype=float) / max_range).tolist(), y=_degrees(a)[:-1],
                        mode="markers", name="true delay", marker={"color": "white", "size": 4, "symbol": "x"})
    fig.update_layout(title=title, xaxis_title="echo time (token)", yaxis_title="azimuth (deg)",
                      template="plotly_white", height=420)
    return fig


def room_plan(geometry: np.ndarray, title: str = "room from above") -> go.Figure:
    """The room rectangle, its box obstacles and the listener, from a geometry row (width,
    height, listener x, y, then boxes x0 y0 x1 y1; NaN where a room has fewer boxes)."""
    g = np.asarray(geometry, dtype=float)
    width, height, lx, ly = g[:4]
    fig = go.Figure()
    fig.add_shape(type="rect", x0=0, y0=0, x1=width, y1=height, line={"color": "black", "width": 2})
    boxes = g[4:].reshape(-1, 4)
    for x0, y0, x1, y1 in boxes[np.isfinite(boxes).all(1)]:
        fig.add_shape(type="rect", x0=x0, y0=y0, x1=x1, y1=y1, fillcolor="#ff7f0e", opacity=0.6, line={"width": 0})
    fig.add_scatter(x=[lx], y=[ly], mode="markers", name="listener", marker={"size": 10, "color": "#d62728"})
    fig.update_layout(title=title, xaxis={"range": [-0.3, width + 0.3], "title": "x (m)"},
                      yaxis={"range": [-0.3, height + 0.3], "title": "y (m)", "scaleanchor": "x"},
                      template="plotly_white", height=420, showlegend=False)
    return fig


def room_error_scatter(x: np.ndarray, y: np.ndarray, ids: Sequence[int], x_label: str, y_label: str,
                       title: str) -> go.Figure:
    """One point per room (e.g. teacher RMSE against student RMSE, or run A against run B), with the
    diagonal: points above it are rooms where the y-axis model errs more."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    top = float(np.nanmax(np.concatenate([x, y]))) if len(x) else 1.0
    fig = go.Figure(go.Scatter(x=x.tolist(), y=y.tolist(), mode="markers", text=[f"room #{int(i)}" for i in ids],
                               name="rooms", marker={"size": 5, "opacity": 0.6}))
    fig.add_scatter(x=[0, top], y=[0, top], mode="lines", name="equal", line={"color": "gray", "dash": "dot"})
    fig.update_layout(title=title, xaxis_title=x_label, yaxis_title=y_label, template="plotly_white", height=420)
    return fig
