"""Figures of BCKD's per-class discrepancy weights |σ(t_c) − σ(s_c)| (rows per image × FPN
level with one ``disc_c<label>`` column per class), shared by the Instances page and the p19
notebook."""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import plotly.graph_objects as go

__all__ = ["DISC_PREFIX", "class_weight_curves", "class_weight_heatmap", "disc_columns"]

DISC_PREFIX = "disc_c"


def disc_columns(frame: pd.DataFrame) -> list[str]:
    """The per-class weight columns in label order (disc_c1, disc_c2, ...)."""
    cols = [c for c in frame.columns if c.startswith(DISC_PREFIX) and c[len(DISC_PREFIX):].isdigit()]
    return sorted(cols, key=lambda c: int(c[len(DISC_PREFIX):]))


def _class_name(column: str, categories: Sequence[str]) -> str:
    k = int(column[len(DISC_PREFIX):])
    return str(categories[k - 1]) if 1 <= k <= len(categories) else f"class {k}"


def class_weight_heatmap(rows: pd.DataFrame, categories: Sequence[str], title: str) -> go.Figure:
    """FPN level × class heatmap of the mean discrepancy weight over ``rows`` (one image's rows
    or many: each (level, class) cell is the mean of its rows)."""
    cols = disc_columns(rows)
    table = rows.groupby("level")[cols].mean().sort_index()
    fig = go.Figure(go.Heatmap(z=table.to_numpy().tolist(), x=[_class_name(c, categories) for c in cols],
                               y=[f"level {int(k)}" for k in table.index], colorscale="Viridis",
                               colorbar={"title": {"text": "|p_T − p_S|"}},
                               hovertemplate="%{y}, %{x}: %{z:.4f}<extra></extra>"))
    fig.update_layout(title={"text": title}, xaxis_title="class", yaxis_title="FPN level (0 = finest)",
                      yaxis_autorange="reversed", height=320, margin={"t": 50, "b": 40})
    return fig


def class_weight_curves(frame: pd.DataFrame, categories: Sequence[str], title: str) -> go.Figure:
    """Mean discrepancy weight of each class per epoch (over all images and levels of ``frame``)."""
    cols = disc_columns(frame)
    curve = frame.groupby("epoch")[cols].mean().sort_index()
    fig = go.Figure()
    for c in cols:
        fig.add_scatter(x=curve.index.tolist(), y=curve[c].tolist(), mode="lines+markers",
                        name=_class_name(c, categories))
    fig.update_layout(title={"text": title}, xaxis_title="epoch", yaxis_title="mean |p_T − p_S|",
                      legend_title_text="class", height=320, margin={"t": 50, "b": 40})
    return fig
