"""Figures of BEV heatmap-detection runs: one scene's BEV input beside its true, teacher and
student centre heatmaps and the teacher–student disparity map with the regions a method
(RDD) selected drawn on it, and AP per class per arm."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["bev_scene_figure", "ap_per_class_bars", "REGION_COLOURS"]

REGION_COLOURS = {True: "#00c853", False: "#ff9100"}  # foreground, background


def _panel(fig, z: np.ndarray, col: int, colorscale: str, zmax: float | None, label: str, bar_x: float | None):
    fig.add_trace(go.Heatmap(z=np.asarray(z, float).tolist(), colorscale=colorscale, zmin=0, zmax=zmax,
                             showscale=bar_x is not None,
                             colorbar=None if bar_x is None else {"title": label, "len": 0.8, "x": bar_x},
                             hovertemplate=f"row %{{y}}, col %{{x}}: {label} %{{z:.3f}}<extra></extra>"), 1, col)


def bev_scene_figure(bev_input: np.ndarray, heatmaps: dict[str, np.ndarray], disparity: np.ndarray | None = None,
                     regions: np.ndarray | None = None, window: int = 3, disparity_label: str = "1 − cos",
                     title: str | None = None) -> go.Figure:
    """Panels of one scene, row 0 at the bottom (y grows north): the BEV input's maximum over its
    channels, each heatmap (K, h, w) as its maximum over classes (``heatmaps`` maps a title such
    as "true" / "teacher" / "student" to it), and the disparity map (h, w) with each selected
    region — rows (row, col, disparity, foreground) — outlined by its window (green: foreground,
    orange: background)."""
    panels = 1 + len(heatmaps) + (disparity is not None)
    names = ["BEV input (max over channels)"] + [f"{k} heatmap" for k in heatmaps]
    if disparity is not None:
        names.append("disparity and selected regions")
    fig = make_subplots(rows=1, cols=panels, subplot_titles=names, horizontal_spacing=0.03)
    _panel(fig, np.asarray(bev_input).max(0), 1, "gray_r", None, "input", None)
    for k, heat in enumerate(heatmaps.values()):
        _panel(fig, np.asarray(heat).max(0), k + 2, "Viridis", 1.0, "p", 1.0 if disparity is None and
               k == len(heatmaps) - 1 else None)
    if disparity is not None:
        _panel(fig, disparity, panels, "Inferno", float(np.nanmax(disparity)) or 1.0, disparity_label, 1.0)
        half = window / 2
        for row, col, _, fg in np.asarray(regions if regions is not None else np.zeros((0, 4)), float).reshape(-1, 4):
            fig.add_shape(type="rect", x0=col - half, x1=col + half, y0=row - half, y1=row + half,
                          line={"color": REGION_COLOURS[bool(fg)], "width": 2}, row=1, col=panels)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    for k in range(panels):  # square cells
        fig.update_yaxes(scaleanchor=f"x{k + 1 if k else ''}", constrain="domain", row=1, col=k + 1)
        fig.update_xaxes(constrain="domain", row=1, col=k + 1)
    fig.update_annotations(font_size=11)
    fig.update_layout(title=title, height=300, width=max(700, 260 * panels), template="plotly_white",
                      margin={"l": 10, "r": 10, "t": 70 if title else 40, "b": 10})
    return fig


def ap_per_class_bars(frame: pd.DataFrame, classes: Sequence[str], arm_col: str = "arm",
                      prefix: str = "test/student_AP_", order: Sequence[str] | None = None,
                      title: str | None = None) -> go.Figure:
    """Grouped bars: per class, each arm's mean AP over its rows (seeds), error bars ± std (n−1)."""
    arms = list(order) if order is not None else list(dict.fromkeys(frame[arm_col]))
    fig = go.Figure()
    for arm in arms:
        part = frame[frame[arm_col] == arm]
        means = [float(part[f"{prefix}{c}"].mean()) for c in classes]
        stds = [float(part[f"{prefix}{c}"].std(ddof=1)) if len(part) > 1 else 0.0 for c in classes]
        fig.add_bar(x=list(classes), y=means, name=arm, error_y={"type": "data", "array": stds})
    fig.update_layout(barmode="group", title=title, yaxis_title="centre-distance AP (1 m)", template="plotly_white")
    return fig
