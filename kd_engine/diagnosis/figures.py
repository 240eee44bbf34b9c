"""Plotly figures of the diagnoses, shared by the dashboard and `kdw report` so both look the same.
Plain functions from the DataFrames the diagnosis module returns; plotly only (no streamlit)."""
from __future__ import annotations

from typing import Mapping

import pandas as pd
import plotly.graph_objects as go

TEMPLATE = "plotly_white"
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def adoption_curves(tables: Mapping[str, pd.DataFrame], title: str = "Teacher mistakes the student adopted") -> go.Figure:
    """Per epoch, the share of the teacher's mistakes each student repeated: solid for the
    distilled student, dashed for its scratch control. `tables`: label -> `adoption()` frame."""
    fig = go.Figure()
    for n, (label, table) in enumerate(tables.items()):
        color = COLORS[n % len(COLORS)]
        fig.add_trace(go.Scatter(x=table["epoch"], y=table["adopted_share"], mode="lines+markers", name=label,
                                 line={"color": color}, customdata=table[["adopted", "teacher_mistakes"]],
                                 hovertemplate="epoch %{x}: %{customdata[0]} of %{customdata[1]} (%{y:.1%})"
                                               "<extra></extra>"))
        if table["control_share"].notna().any():
            fig.add_trace(go.Scatter(x=table["epoch"], y=table["control_share"], mode="lines+markers",
                                     name="scratch control" if len(tables) == 1 else f"{label}: scratch control",
                                     line={"color": color, "dash": "dash"}))
    fig.update_layout(title=title, template=TEMPLATE, height=320, xaxis={"title": "epoch", "dtick": 1},
                      yaxis={"title": "share of teacher mistakes", "tickformat": ".0%", "rangemode": "tozero"},
                      margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig


def layer_auroc_bars(ranking: pd.DataFrame, title: str | None = None) -> go.Figure:
    """The ranked layers: AUROC of disparity for the student's error (0.5 = no better than chance)."""
    labels = [s if s == t else f"{s} ← {t}" for s, t in zip(ranking["student_layer"], ranking["teacher_layer"])]
    fig = go.Figure(go.Bar(x=ranking["auroc"], y=labels, orientation="h", marker_color=COLORS[0],
                           customdata=ranking[["spearman", "instances", "errors"]],
                           hovertemplate="%{y}: AUROC %{x:.3f}, Spearman %{customdata[0]:.3f} "
                                         "(%{customdata[1]} instances, %{customdata[2]} errors)<extra></extra>"))
    fig.add_vline(x=0.5, line_dash="dot", line_color="grey")
    epoch = int(ranking["epoch"].iloc[0]) if len(ranking) else 0
    fig.update_layout(title=title or f"Layers ranked by how well disparity predicts the student's error (epoch {epoch})",
                      template=TEMPLATE, height=120 + 28 * max(len(labels), 1),
                      xaxis={"title": "AUROC", "range": [0, 1]}, yaxis={"autorange": "reversed"},
                      margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig


def layer_score_curves(scores: pd.DataFrame, metric: str = "auroc") -> go.Figure:
    """A layer score (auroc or spearman) per epoch, one line per layer pair."""
    fig = go.Figure()
    for n, ((s, t), group) in enumerate(scores.groupby(["student_layer", "teacher_layer"], sort=False)):
        fig.add_trace(go.Scatter(x=group["epoch"], y=group[metric], mode="lines+markers",
                                 name=s if s == t else f"{s} ← {t}", line={"color": COLORS[n % len(COLORS)]}))
    fig.update_layout(title=f"{'AUROC' if metric == 'auroc' else 'Spearman ρ'} per epoch", template=TEMPLATE,
                      height=320, xaxis={"title": "epoch", "dtick": 1}, yaxis_title=metric,
                      margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig


def weight_by_group(frame: pd.DataFrame, factor: str, labels: tuple[str, str]) -> go.Figure:
    """Box plots of the instance weights of the two groups of one factor."""
    known = frame.dropna(subset=[factor])
    fig = go.Figure()
    for n, (label, value) in enumerate(zip(labels, (True, False))):
        part = known[known[factor].astype(bool) == value]
        fig.add_trace(go.Box(y=part["weight"], name=f"{label} ({len(part)})", boxpoints="outliers",
                             marker_color=COLORS[n]))
    fig.update_layout(title=factor.replace("_", " "), template=TEMPLATE, height=300, showlegend=False,
                      yaxis_title="weight", margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig


def scalar_lines(scalars: pd.DataFrame, key: str, runs: list[str] | None = None) -> go.Figure:
    """One scalar key over steps, one line per run (`scalars` has a `run` column)."""
    fig = go.Figure()
    data = scalars[scalars["key"] == key]
    for n, run in enumerate(runs or list(dict.fromkeys(data["run"]))):
        part = data[data["run"] == run].sort_values("step")
        fig.add_trace(go.Scatter(x=part["step"], y=part["value"], mode="lines" if len(part) > 20 else "lines+markers",
                                 name=run, line={"color": COLORS[n % len(COLORS)]}))
    fig.update_layout(title=key, template=TEMPLATE, height=280, xaxis_title="step", showlegend=runs is not None
                      and len(runs) > 1, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig
