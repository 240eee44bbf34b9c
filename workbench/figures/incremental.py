"""Figures for class-incremental runs (WCBC-IOD): one mosaic with what was decided per cell,
class distance matrices side by side, and old/new/harmonic accuracy bars per arm."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["cell_decisions", "class_distance_heatmaps", "old_new_bars", "SOURCE_NAMES"]

SOURCE_NAMES = {0: "none", 1: "label", 2: "teacher"}  # the assignment sources recorded by wcbc


def _name(value, background: int = 10) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    value = int(value)
    return "empty" if value < 0 else "bg" if value == background else str(value)


def cell_lines(row: pd.Series) -> list[str]:
    """What one cell's row says, one line per recorded decision (absent columns are skipped)."""
    lines = [f"digit {_name(row.get('digit'))} · label {_name(row.get('label'))}"]
    if "assigned" in row and pd.notna(row.get("assigned")):
        source = SOURCE_NAMES.get(int(row["source"]), "?") if pd.notna(row.get("source")) else "?"
        lines.append(f"class {_name(row['assigned'])} ({source}) ω {float(row['omega']):.2f}")
    preds = [f"{who} {_name(row[f'{who}_pred'])}" for who in ("teacher", "student") if pd.notna(row.get(f"{who}_pred"))]
    if preds:
        lines.append(" · ".join(preds))
    return lines


def cell_decisions(image: np.ndarray, rows: pd.DataFrame, title: str | None = None, grid: int = 2) -> go.Figure:
    """A mosaic (H, W in [0, 1]) with each cell's recorded rows (one per ``cell``, row-major)
    written under it: true digit and task label, the class assignment used and its source, ω,
    and the teacher's and student's predictions."""
    image = np.asarray(image, float)
    size = image.shape[0] // grid
    fig = go.Figure(go.Heatmap(z=image[::-1].tolist(), colorscale="gray_r", zmin=0, zmax=1, showscale=False,
                               hoverinfo="skip"))
    for row in rows.itertuples(index=False):
        cell = int(row.cell)
        r, c = divmod(cell, grid)
        x0, y_top = c * size - 0.5, image.shape[0] - r * size - 0.5
        fig.add_shape(type="rect", x0=x0, x1=x0 + size, y0=y_top - size, y1=y_top, line={"color": "#1f77b4"})
        fig.add_annotation(x=x0 + size / 2, y=y_top - size + 0.3, text="<br>".join(cell_lines(pd.Series(row._asdict()))),
                           showarrow=False, yanchor="top", font={"size": 10},
                           bgcolor="rgba(255,255,255,0.8)")
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, scaleanchor="x")
    fig.update_layout(title=title, height=460, template="plotly_white", margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig


def class_distance_heatmaps(matrices: Sequence[np.ndarray], titles: Sequence[str], classes: Sequence[int],
                            title: str | None = None) -> go.Figure:
    """K×K class distance matrices side by side, one colour scale each (their scales differ)."""
    labels = [str(c) for c in classes]
    fig = make_subplots(rows=1, cols=len(matrices), subplot_titles=list(titles), horizontal_spacing=0.06)
    for k, matrix in enumerate(matrices):
        fig.add_trace(go.Heatmap(z=np.asarray(matrix, float).tolist(), x=labels, y=labels, colorscale="Viridis",
                                 showscale=False, hovertemplate="%{y} – %{x}: %{z:.3f}<extra></extra>"), 1, k + 1)
        fig.update_yaxes(autorange="reversed", row=1, col=k + 1)
    fig.update_layout(title=title, height=360, template="plotly_white", margin={"l": 10, "r": 10, "t": 70, "b": 10})
    return fig


def old_new_bars(summary: pd.DataFrame, order: Sequence[str], title: str | None = None) -> go.Figure:
    """Grouped bars per arm: old-class, new-class and harmonic-mean accuracy, mean ± std.
    ``summary``: rows with columns arm, measure (old / new / harmonic), mean, std."""
    fig = go.Figure()
    for measure in ("old", "new", "harmonic"):
        part = summary[summary["measure"] == measure].set_index("arm").reindex(list(order))
        fig.add_bar(x=list(order), y=part["mean"].tolist(), name=measure,
                    error_y={"type": "data", "array": part["std"].fillna(0).tolist()})
    fig.update_layout(title=title, barmode="group", yaxis_title="accuracy", yaxis_range=[0, 1.05],
                      template="plotly_white")
    return fig
