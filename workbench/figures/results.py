"""Figures of experiment results: arms over seeds, paired differences, curves and per-instance
distributions by arm. Inputs are the frames of `kd_engine.experiment` (one row per arm x seed)."""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd
import plotly.graph_objects as go

__all__ = ["arm_comparison", "paired_differences", "arm_curves", "arm_distributions", "loss_trajectory"]

_PALETTE = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880")


def _arms(frame: pd.DataFrame, arm_col: str, order: Iterable[str] | None) -> list[str]:
    present = list(dict.fromkeys(frame[arm_col]))
    return [a for a in order if a in present] if order is not None else present


def _std(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def arm_comparison(frame: pd.DataFrame, metric: str, arm_col: str = "arm", seed_col: str = "seed",
                   order: Iterable[str] | None = None, title: str | None = None) -> go.Figure:
    """Bars of each arm's mean with ± std (n−1) error bars, and one point per seed on top."""
    arms = _arms(frame, arm_col, order)
    groups = [frame.loc[frame[arm_col] == a, metric].to_numpy(dtype=float) for a in arms]
    means = [float(g.mean()) for g in groups]
    stds = [_std(g) for g in groups]
    fig = go.Figure()
    fig.add_bar(x=arms, y=means, name="mean ± std", marker_color=[_PALETTE[i % 8] for i in range(len(arms))],
                opacity=0.55, error_y={"type": "data", "array": stds, "visible": True},
                hovertemplate="%{x}: %{y:.4f} ± %{error_y.array:.4f}<extra></extra>")
    xs, ys, seeds = [], [], []
    for arm in arms:
        rows = frame[frame[arm_col] == arm]
        xs += [arm] * len(rows)
        ys += rows[metric].astype(float).tolist()
        seeds += rows[seed_col].tolist() if seed_col in rows else [None] * len(rows)
    fig.add_scatter(x=xs, y=ys, mode="markers", name="per seed", customdata=seeds,
                    marker={"color": "black", "size": 7, "symbol": "circle-open"},
                    hovertemplate="%{x} seed %{customdata}: %{y:.4f}<extra></extra>")
    low = min(ys + [m - s for m, s in zip(means, stds)]) if ys else 0.0
    high = max(ys + [m + s for m, s in zip(means, stds)]) if ys else 1.0
    pad = max((high - low) * 0.15, 1e-3)
    n = max((len(g) for g in groups), default=0)
    fig.update_layout(title=title or f"{metric}: mean ± std over {n} seed(s)", yaxis_title=metric,
                      yaxis_range=[low - pad, high + pad], showlegend=True, template="plotly_white")
    return fig


def paired_differences(frame: pd.DataFrame, baseline: str, metric: str, arm_col: str = "arm",
                       seed_col: str = "seed", order: Iterable[str] | None = None,
                       title: str | None = None) -> go.Figure:
    """Per-seed differences arm − baseline, with the mean ± 2·std/√n band of the reporting rule:
    an arm whose band excludes zero is resolved, one whose band crosses zero is within noise."""
    table = frame.pivot_table(index=seed_col, columns=arm_col, values=metric, aggfunc="first")
    arms = [a for a in _arms(frame, arm_col, order) if a != baseline]
    fig = go.Figure()
    for i, arm in enumerate(arms):
        diffs = (table[arm] - table[baseline]).dropna()
        n = len(diffs)
        mean = float(diffs.mean()) if n else math.nan
        half = 2 * _std(diffs.to_numpy()) / math.sqrt(n) if n > 1 else 0.0
        color = _PALETTE[i % 8]
        fig.add_scatter(x=[arm] * n, y=diffs.tolist(), mode="markers", name=f"{arm} per seed",
                        customdata=diffs.index.tolist(), marker={"color": color, "size": 8},
                        hovertemplate=f"{arm} seed %{{customdata}}: %{{y:+.4f}}<extra></extra>")
        fig.add_scatter(x=[arm], y=[mean], mode="markers", name=f"{arm} mean ± 2·std/√n",
                        marker={"color": color, "size": 14, "symbol": "diamond"},
                        error_y={"type": "data", "array": [half], "visible": True},
                        hovertemplate=f"{arm} mean %{{y:+.4f}} ± {half:.4f}<extra></extra>")
    fig.add_hline(y=0.0, line_dash="dash", line_color="gray")
    fig.update_layout(title=title or f"paired {metric} difference vs {baseline} (band: 2·std/√n)",
                      yaxis_title=f"Δ {metric}", template="plotly_white")
    return fig


def arm_curves(curves: pd.DataFrame, key: str, x: str = "epoch", arm_col: str = "arm",
               seed_col: str = "seed", title: str | None = None) -> go.Figure:
    """Curves of one scalar over training: a thin line per arm x seed and a thick mean per arm.
    `curves` is long format (as `Run.scalars()` returns it) with `arm` and `seed` columns added."""
    data = curves[curves["key"] == key]
    fig = go.Figure()
    for i, arm in enumerate(_arms(data, arm_col, None)):
        color = _PALETTE[i % 8]
        rows = data[data[arm_col] == arm]
        for seed, part in rows.groupby(seed_col, sort=True):
            part = part.sort_values(x)
            fig.add_scatter(x=part[x].tolist(), y=part["value"].tolist(), mode="lines",
                            line={"color": color, "width": 1}, opacity=0.35, legendgroup=arm,
                            name=f"{arm} seed {seed}", showlegend=False)
        mean = rows.groupby(x)["value"].mean().sort_index()
        fig.add_scatter(x=mean.index.tolist(), y=mean.tolist(), mode="lines+markers", legendgroup=arm,
                        name=f"{arm} (mean)", line={"color": color, "width": 3})
    fig.update_layout(title=title or f"{key} by {x}", xaxis_title=x, yaxis_title=key,
                      template="plotly_white")
    return fig


def arm_distributions(instances: pd.DataFrame, column: str, group_col: str = "arm", nbins: int = 40,
                      log_y: bool = False, title: str | None = None) -> go.Figure:
    """Overlaid histograms of one per-instance quantity (e.g. KD loss), one per group."""
    fig = go.Figure()
    values = instances[column].astype(float)
    edges = np.histogram_bin_edges(values[np.isfinite(values)], bins=nbins) if len(values) else [0, 1]
    size = float(edges[1] - edges[0]) if len(edges) > 1 else 1.0
    for i, group in enumerate(_arms(instances, group_col, None)):
        part = instances.loc[instances[group_col] == group, column].astype(float)
        fig.add_histogram(x=part.tolist(), name=f"{group} (n={len(part)})", opacity=0.6,
                          marker_color=_PALETTE[i % 8],
                          xbins={"start": float(edges[0]), "end": float(edges[-1]), "size": size})
    fig.update_layout(barmode="overlay", title=title or f"per-instance {column}", xaxis_title=column,
                      yaxis_title="instances", yaxis_type="log" if log_y else "linear",
                      template="plotly_white")
    return fig


def loss_trajectory(curves: pd.DataFrame, x_key: str, y_key: str, x: str = "epoch", arm_col: str = "arm",
                    seed_col: str = "seed", title: str | None = None) -> go.Figure:
    """Training trajectory in the plane of two scalars (e.g. CE vs KD loss): one line per arm
    through its per-`x` points (averaged over the seeds present), start and end marked.
    `curves` is long format (`key`, `value`, `x`) with `arm` and `seed` columns added."""
    data = curves[curves["key"].isin([x_key, y_key])]
    fig = go.Figure()
    for i, arm in enumerate(_arms(data, arm_col, None)):
        rows = data[data[arm_col] == arm]
        wide = rows.pivot_table(index=x, columns="key", values="value", aggfunc="mean").sort_index()
        if x_key not in wide or y_key not in wide:
            continue
        wide = wide.dropna()
        color, seeds = _PALETTE[i % 8], rows[seed_col].nunique()
        fig.add_scatter(x=wide[x_key].tolist(), y=wide[y_key].tolist(), mode="lines+markers",
                        marker={"size": 4}, line={"color": color, "width": 2},
                        text=[f"{x} {e}" for e in wide.index], name=f"{arm} ({seeds} seed(s))")
        for j, label in ((0, "start"), (-1, "end")):
            fig.add_scatter(x=[float(wide[x_key].iloc[j])], y=[float(wide[y_key].iloc[j])], mode="markers+text",
                            marker={"color": color, "size": 11, "symbol": "circle" if j == 0 else "star"},
                            text=[f"{arm} {label}"], textposition="top right", showlegend=False)
    fig.update_layout(title=title or f"{y_key} against {x_key} over {x}", xaxis_title=x_key,
                      yaxis_title=y_key, xaxis_type="log", yaxis_type="log", template="plotly_white")
    return fig
