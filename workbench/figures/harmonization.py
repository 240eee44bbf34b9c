"""Figures of image-harmonization runs: composite, output and real image side by side (with the
mask and the output's error), and the foreground–background relation matrices.

Plain functions of arrays, shared by the dashboard's Instances view and the GiftNet notebook.
Images are (3, H, W) RGB in [0, 1]; a relation matrix is (positions, prototypes).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["harmonization_panels", "relation_heatmaps"]

_TEMPLATE = "plotly_white"


def harmonization_panels(images: Mapping[str, np.ndarray], title: str | None = None) -> go.Figure:
    """One row: each named (3, H, W) RGB image drawn as it is; a (H, W) map (``mask``, ``error``)
    as a 0-1 grey / Inferno heatmap. Rows are drawn top-down as in the image."""
    names = list(images)
    fig = make_subplots(rows=1, cols=max(1, len(names)), subplot_titles=names, horizontal_spacing=0.03)
    for i, name in enumerate(names, start=1):
        z = np.asarray(images[name], dtype=float)
        if z.ndim == 3:
            rgb = (np.clip(z.transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8)
            fig.add_trace(go.Image(z=rgb, name=name, hovertemplate=f"{name}<extra></extra>"), 1, i)
        else:
            top = 1.0 if name == "mask" else max(float(z.max()), 1e-6)
            fig.add_trace(go.Heatmap(z=z.tolist(), zmin=0.0, zmax=top, colorscale="gray" if name == "mask" else "Inferno",
                                     showscale=name != "mask", name=name,
                                     hovertemplate=f"{name}: %{{z:.4f}}<extra></extra>"), 1, i)
            fig.update_yaxes(autorange="reversed", scaleanchor=f"x{i if i > 1 else ''}", row=1, col=i)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_layout(title=title, template=_TEMPLATE, height=260, width=max(300, 170 * len(names) + 60),
                      margin={"l": 10, "r": 10, "t": 60 if title else 35, "b": 10})
    return fig


def relation_heatmaps(matrices: Mapping[str, np.ndarray], title: str | None = None,
                      prototypes: Sequence[str] = ("top-left", "top-right", "bottom-left", "bottom-right")) -> go.Figure:
    """Side-by-side heatmaps of relation matrices (foreground positions × background prototypes),
    cosine on a shared −1..1 scale."""
    names = list(matrices)
    fig = make_subplots(rows=1, cols=max(1, len(names)), subplot_titles=names, horizontal_spacing=0.08)
    for i, name in enumerate(names, start=1):
        z = np.asarray(matrices[name], dtype=float)
        fig.add_trace(go.Heatmap(z=z.tolist(), x=list(prototypes)[: z.shape[1]], zmin=-1.0, zmax=1.0, colorscale="RdBu",
                                 showscale=i == len(names), name=name,
                                 hovertemplate="position %{y}, prototype %{x}: cos %{z:.3f}<extra></extra>"), 1, i)
        fig.update_yaxes(title_text="foreground position" if i == 1 else None, row=1, col=i)
    fig.update_layout(title=title, template=_TEMPLATE, height=320, width=max(320, 260 * len(names) + 80),
                      margin={"l": 10, "r": 10, "t": 60 if title else 35, "b": 10})
    return fig
