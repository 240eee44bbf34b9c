"""Figures of anomaly-detection runs: each image above its anomaly map (with the pixel ground
truth outlined where there is one), and the image scores of normal and anomalous images."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["anomaly_map_grid", "score_histogram", "KIND_LABELS"]

KIND_LABELS = {0: "normal", 1: "other digit", 2: "pasted patch"}


def anomaly_map_grid(images: Sequence[np.ndarray], maps: Sequence[np.ndarray], titles: Sequence[str],
                     masks: Sequence[np.ndarray | None] | None = None, title: str | None = None) -> go.Figure:
    """Two rows: the images (grey, [0, 1]) and their anomaly maps on one colour scale (shared by
    every map, so brighter means more anomalous across images). A mask with anomalous pixels
    (value 1) is drawn as a rectangle around them on both rows."""
    n = len(images)
    fig = make_subplots(rows=2, cols=max(n, 1), subplot_titles=list(titles) + [""] * n,
                        horizontal_spacing=0.01, vertical_spacing=0.08)
    top = float(max((np.nanmax(m) for m in maps), default=1.0)) or 1.0
    for k, (image, amap) in enumerate(zip(images, maps)):
        image, amap = np.asarray(image, float), np.asarray(amap, float)
        fig.add_trace(go.Heatmap(z=image[::-1].tolist(), colorscale="gray_r", zmin=0, zmax=1, showscale=False,
                                 hoverinfo="skip"), 1, k + 1)
        fig.add_trace(go.Heatmap(z=amap[::-1].tolist(), colorscale="Inferno", zmin=0, zmax=top,
                                 showscale=k == n - 1, colorbar={"title": "1 − cos", "len": 0.45, "y": 0.22},
                                 hovertemplate="score %{z:.3f}<extra></extra>"), 2, k + 1)
        mask = None if masks is None else masks[k]
        if mask is not None and (np.asarray(mask) > 0).any():
            rows, cols = np.nonzero(np.asarray(mask)[::-1] > 0)
            for r in (1, 2):
                fig.add_shape(type="rect", x0=cols.min() - 0.5, x1=cols.max() + 0.5, y0=rows.min() - 0.5,
                              y1=rows.max() + 0.5, line={"color": "#00c853", "width": 2}, row=r, col=k + 1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_annotations(font_size=10)
    fig.update_layout(title=title, height=330, template="plotly_white",
                      margin={"l": 10, "r": 10, "t": 70 if title else 40, "b": 10})
    return fig


def score_histogram(frame: pd.DataFrame, column: str = "anomaly_score", by: str = "kind",
                    names: Mapping[int, str] | None = None, nbins: int = 30, title: str | None = None) -> go.Figure:
    """Overlaid histograms of the image score, one per kind (normal, other digit, pasted patch)."""
    names = dict(KIND_LABELS if names is None else names)
    values = frame[column].astype(float)
    edges = np.histogram_bin_edges(values[np.isfinite(values)], bins=nbins) if len(values) else np.array([0.0, 1.0])
    size = float(edges[1] - edges[0]) if len(edges) > 1 and edges[1] > edges[0] else 1.0
    fig = go.Figure()
    colours = ["#1f77b4", "#d62728", "#ff7f0e", "#2ca02c"]
    for i, group in enumerate(sorted(frame[by].dropna().unique())):
        part = frame.loc[frame[by] == group, column].astype(float)
        label = names.get(int(group), str(group)) if isinstance(group, (int, np.integer, float)) else str(group)
        fig.add_histogram(x=part.tolist(), name=f"{label} (n={len(part)})", opacity=0.6,
                          marker_color=colours[i % len(colours)],
                          xbins={"start": float(edges[0]), "end": float(edges[-1]) + size, "size": size})
    fig.update_layout(barmode="overlay", title=title or f"{column} by {by}", xaxis_title=column,
                      yaxis_title="images", template="plotly_white")
    return fig
