"""Where a query-based extractor looks: one image, the boxes its queries predict and each
query's cross-attention map (UniKD's knowledge extractor; `query_attention` artifacts).

An artifact row holds one image's attention (Q, N) over the tokens of several feature maps,
finest first (``shapes`` gives each map's (h, w)). For display every map is brought to the
finest grid (each coarse cell repeated over the fine cells it covers) and the maps are summed,
so a query's panel shows all the attention it spends, at whatever level.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["attention_on_grid", "query_attention_figure"]


def attention_on_grid(attention: np.ndarray, shapes: Sequence[Sequence[int]]) -> np.ndarray:
    """(Q, N) attention over concatenated (h_l × w_l) maps -> (Q, H, W) on the finest grid."""
    attention = np.asarray(attention, dtype=float)
    H, W = (int(v) for v in shapes[0])
    out, start = np.zeros((attention.shape[0], H, W)), 0
    for h, w in shapes:
        h, w = int(h), int(w)
        block = attention[:, start:start + h * w].reshape(-1, h, w)
        rows, cols = (np.arange(H) * h) // H, (np.arange(W) * w) // W
        out += block[:, rows][:, :, cols]
        start += h * w
    if start != attention.shape[1]:
        raise ValueError(f"the shapes {list(shapes)} cover {start} tokens, the attention has {attention.shape[1]}")
    return out


def _box_trace(box, size, color, name):
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box) * np.asarray([size[1], size[0], size[1], size[0]]))
    return go.Scatter(x=[x0, x1, x1, x0, x0], y=[y0, y0, y1, y1, y0], mode="lines", name=name, showlegend=False,
                      line={"color": color, "width": 2}, hoverinfo="name")


def query_attention_figure(image: np.ndarray, attention: np.ndarray, shapes: Sequence[Sequence[int]],
                           boxes: Sequence[Sequence[float]] | None = None, scores: Sequence[float] | None = None,
                           labels: Sequence[int] | None = None, class_names: Sequence[str] = (),
                           teacher_boxes: Sequence[Sequence[float]] = (), title: str = "") -> go.Figure:
    """The image (teacher boxes dashed white, each query's box in its panel's colour) and one
    heat map per query, titled with the query's predicted class and object score. Boxes are
    normalised xyxy."""
    grid = attention_on_grid(attention, shapes)
    Q = grid.shape[0]
    names = [f"q{q}" + (f" {class_names[labels[q] - 1] if labels is not None and 0 < labels[q] <= len(class_names) else ''}"
                        f" {scores[q]:.2f}" if scores is not None else "") for q in range(Q)]
    fig = make_subplots(rows=1, cols=Q + 1, subplot_titles=["image", *names], horizontal_spacing=0.01)
    image = np.asarray(image, dtype=float)
    size = image.shape[:2]
    fig.add_trace(go.Image(z=(np.clip(image, 0, 1) * 255).astype(np.uint8)), row=1, col=1)
    for box in teacher_boxes:
        trace = _box_trace(box, size, "white", "teacher box")
        trace.line.dash = "dash"
        fig.add_trace(trace, row=1, col=1)
    for q in range(Q):
        fig.add_trace(go.Heatmap(z=grid[q], x=(np.arange(grid.shape[2]) + 0.5) * size[1] / grid.shape[2],
                                 y=(np.arange(grid.shape[1]) + 0.5) * size[0] / grid.shape[1], coloraxis="coloraxis",
                                 name=names[q]), row=1, col=q + 2)
        if boxes is not None:
            fig.add_trace(_box_trace(boxes[q], size, "red", names[q]), row=1, col=q + 2)
            fig.add_trace(_box_trace(boxes[q], size, "red", names[q]), row=1, col=1)
    for col in range(1, Q + 2):
        fig.update_xaxes(visible=False, range=[0, size[1]], row=1, col=col)
        fig.update_yaxes(visible=False, range=[size[0], 0], scaleanchor=f"x{col if col > 1 else ''}", row=1, col=col)
    fig.update_layout(title=title, coloraxis={"colorscale": "Viridis", "colorbar": {"title": "attention"}},
                      height=190, width=140 * (Q + 1) + 80, margin={"l": 10, "r": 10, "t": 60, "b": 10},
                      template="plotly_white")
    return fig
