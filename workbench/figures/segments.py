"""Figures of open-vocabulary segmentation runs (ZeroSeg): an image with its true, teacher and
student label maps next to the student's segment assignment map (which of its K segment tokens
each pixel belongs to), and how often each token was matched to a teacher view (the collapse
check). Plain functions of arrays, shared by the dashboard and the notebook."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.colors as pcolors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.figures.dense import MASK_PANELS, class_colorscale

__all__ = ["segment_panels", "token_usage_bars"]


def _segment_colorscale(k: int) -> list[list]:
    palette = pcolors.qualitative.Set2 + pcolors.qualitative.Pastel1
    scale = []
    for i in range(k):
        scale += [[i / k, palette[i % len(palette)]], [(i + 1) / k, palette[i % len(palette)]]]
    return scale


def segment_panels(maps: Mapping[str, np.ndarray], class_names: Sequence[str], segment_class: Sequence[int] | None = None,
                   segments: int | None = None, title: str | None = None) -> go.Figure:
    """One row of panels in the order given: ``image`` (grey), label maps (``true``, ``teacher``,
    ``student``: the class colour scale) and ``assign`` (the segment index per pixel, one colour
    per segment; the hover names the segment's zero-shot class from ``segment_class``)."""
    names = list(maps)
    k = len(class_names)
    fig = make_subplots(rows=1, cols=max(1, len(names)), subplot_titles=names, horizontal_spacing=0.03)
    for i, name in enumerate(names, start=1):
        z = np.asarray(maps[name])[::-1]
        if name in MASK_PANELS:
            text = [[class_names[int(v)] if 0 <= int(v) < k else str(int(v)) for v in row] for row in z]
            trace = go.Heatmap(z=z.tolist(), zmin=-0.5, zmax=k - 0.5, colorscale=class_colorscale(k), showscale=False,
                               text=text, hovertemplate=f"{name}: %{{text}}<extra></extra>")
        elif name == "assign":
            n = int(segments or (int(z.max()) + 1))
            named = list(segment_class) if segment_class is not None else [None] * n
            text = [[f"segment {int(v)}" + (f" → {class_names[int(named[int(v)])]}" if named[int(v)] is not None else "")
                     for v in row] for row in z]
            trace = go.Heatmap(z=z.tolist(), zmin=-0.5, zmax=n - 0.5, colorscale=_segment_colorscale(n),
                               showscale=False, text=text, hovertemplate="%{text}<extra></extra>")
        else:
            trace = go.Heatmap(z=z.astype(float).tolist(), zmin=0.0, zmax=1.0, colorscale="gray", showscale=False,
                               hovertemplate="%{z:.2f}<extra></extra>")
        fig.add_trace(trace, row=1, col=i)
        fig.update_xaxes(showticklabels=False, row=1, col=i)
        fig.update_yaxes(showticklabels=False, scaleanchor=f"x{i if i > 1 else ''}", row=1, col=i)
    fig.update_layout(title=title, template="plotly_white", height=260, width=max(300, 190 * len(names)),
                      margin={"l": 10, "r": 10, "t": 60, "b": 10})
    return fig


def token_usage_bars(frame: pd.DataFrame, columns: Sequence[str], segments: int, title: str | None = None) -> go.Figure:
    """Bars: how many (image, view) pairs were matched to each segment token, over ``columns``
    (``view_token_<v>``, −1 = blank view, left out). One tall bar means the tokens collapsed."""
    values = np.concatenate([frame[c].dropna().to_numpy(dtype=float) for c in columns]) if columns else np.zeros(0)
    values = values[values >= 0].astype(int)
    counts = np.bincount(values, minlength=segments)[:segments] if len(values) else np.zeros(segments, dtype=int)
    fig = go.Figure(go.Bar(x=[f"token {k}" for k in range(segments)], y=counts.tolist(),
                           hovertemplate="%{x}: %{y} views<extra></extra>"))
    fig.update_layout(title=title, template="plotly_white", height=280, yaxis_title="matched views",
                      margin={"l": 40, "r": 10, "t": 50, "b": 30})
    return fig
