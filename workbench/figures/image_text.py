"""Figures of two-tower image–text runs: the teacher's and the student's affinity matrices of one
batch side by side, and per-pair image→text ranks."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["affinity_matrices", "rank_histogram"]


def affinity_matrices(matrices: dict[str, np.ndarray], captions: Sequence[str] | None = None,
                      title: str = "affinity matrices of one batch") -> go.Figure:
    """One heatmap per role (row i: image i's cosines with the batch's captions; the diagonal is
    each image's own caption), on one colour scale so the two can be compared."""
    roles = list(matrices)
    fig = make_subplots(rows=1, cols=len(roles), subplot_titles=roles, horizontal_spacing=0.08)
    labels = list(captions) if captions is not None else None
    for k, role in enumerate(roles):
        m = np.asarray(matrices[role], dtype=float)
        ticks = labels if labels is not None and len(labels) == m.shape[1] else list(range(m.shape[1]))
        fig.add_trace(go.Heatmap(z=m, x=ticks, y=list(range(m.shape[0])), zmin=-1, zmax=1, colorscale="RdBu",
                                 reversescale=True, showscale=k == len(roles) - 1, colorbar={"title": "cos"},
                                 hovertemplate="image %{y}<br>caption %{x}<br>cos %{z:.3f}<extra>" + role + "</extra>"),
                      row=1, col=k + 1)
        fig.update_yaxes(autorange="reversed", title_text="image (pair)" if k == 0 else None, row=1, col=k + 1)
        fig.update_xaxes(title_text="caption", tickangle=60, row=1, col=k + 1)
    fig.update_layout(title=title, template="plotly_white", height=460)
    return fig


def rank_histogram(frame: pd.DataFrame, columns: Sequence[str], title: str) -> go.Figure:
    """Counts of each image→text rank (1 = its own caption first) per recorded rank column."""
    long = pd.concat([pd.DataFrame({"rank": frame[c].to_numpy(), "who": c}) for c in columns if c in frame],
                     ignore_index=True)
    fig = px.histogram(long, x="rank", color="who", barmode="group", template="plotly_white", title=title)
    fig.update_layout(xaxis_title="image→text rank", yaxis_title="pairs")
    return fig
