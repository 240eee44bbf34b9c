"""Figures of searches (kd_engine.search.read): best reward so far against the number of
evaluations, one line per search or a mean ± std band per strategy over seeds, and the MCTS
visit counts per tree level, and a search's proxy rewards against final scores."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

__all__ = ["search_curves", "search_bands", "level_visits", "proxy_vs_final"]

_PALETTE = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880")


def _best_so_far(rows: pd.DataFrame, value: str) -> np.ndarray:
    ordered = pd.to_numeric(rows.sort_values("trial")[value], errors="coerce").fillna(-np.inf)
    best = np.maximum.accumulate(ordered.to_numpy(dtype=float))
    return np.where(np.isfinite(best), best, np.nan)


def search_curves(frame: pd.DataFrame, line_col: str = "search_id", value: str = "reward",
                  title: str | None = None, y_title: str = "best reward so far") -> go.Figure:
    """One line per `line_col` value: the best `value` among the first k evaluations, against k."""
    fig = go.Figure()
    for i, (name, rows) in enumerate(frame.groupby(line_col, sort=False)):
        best = _best_so_far(rows, value)
        fig.add_scatter(x=np.arange(1, len(best) + 1), y=best, mode="lines+markers", name=str(name),
                        line={"color": _PALETTE[i % 8], "shape": "hv"}, marker={"size": 4},
                        hovertemplate=f"{name}<br>evaluation %{{x}}: %{{y:.4f}}<extra></extra>")
    fig.update_layout(title=title or "best reward so far against evaluations", xaxis_title="evaluations",
                      yaxis_title=y_title, legend_title=line_col)
    return fig


def search_bands(frame: pd.DataFrame, group_col: str = "strategy", seed_col: str = "seed",
                 value: str = "reward", title: str | None = None,
                 y_title: str = "best reward so far") -> go.Figure:
    """Per `group_col` (e.g. mcts, random): the mean over seeds of the best-so-far curve with a
    ± std (n−1) band, and each seed as a thin line. Curves are cut to the shortest seed."""
    fig = go.Figure()
    for i, (group, rows) in enumerate(frame.groupby(group_col, sort=False)):
        color = _PALETTE[i % 8]
        curves = [_best_so_far(r, value) for _, r in rows.groupby(seed_col)]
        n = min(len(c) for c in curves)
        stack = np.vstack([c[:n] for c in curves])
        x = np.arange(1, n + 1)
        for seed_curve in stack:
            fig.add_scatter(x=x, y=seed_curve, mode="lines", line={"color": color, "width": 0.7},
                            opacity=0.35, showlegend=False, hoverinfo="skip")
        mean = np.nanmean(stack, axis=0)
        std = np.nanstd(stack, axis=0, ddof=1) if len(stack) > 1 else np.zeros(n)
        fig.add_scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([mean + std, (mean - std)[::-1]]),
                        fill="toself", fillcolor=color, opacity=0.15, line={"width": 0}, showlegend=False,
                        hoverinfo="skip")
        fig.add_scatter(x=x, y=mean, mode="lines", name=f"{group} (mean ± std, {len(stack)} seeds)",
                        line={"color": color, "width": 2.5})
    fig.update_layout(title=title or "best reward so far: mean ± std over seeds", xaxis_title="evaluations",
                      yaxis_title=y_title)
    return fig


def level_visits(visits: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Bars of MCTS visit counts per choice, one group per tree level (`level`, `choice`, `visits`)."""
    fig = go.Figure()
    for i, (level, rows) in enumerate(visits.groupby("level", sort=False)):
        fig.add_bar(x=[f"{level}={c}" for c in rows["choice"]], y=rows["visits"], name=str(level),
                    marker_color=_PALETTE[i % 8])
    fig.update_layout(title=title or "MCTS visits per tree level", xaxis_title="choice", yaxis_title="visits")
    return fig


def proxy_vs_final(frame: pd.DataFrame, proxy: str = "reward", final: str = "final", label_col: str = "label",
                   title: str | None = None) -> go.Figure:
    """One point per configuration: its proxy reward (x) against its score after full training (y);
    a search whose proxy ranks configurations as the final training does rises left to right."""
    fig = go.Figure()
    fig.add_scatter(x=frame[proxy].astype(float).tolist(), y=frame[final].astype(float).tolist(), mode="markers",
                    text=frame[label_col].astype(str).tolist() if label_col in frame else None,
                    marker={"size": 9, "color": _PALETTE[0]},
                    hovertemplate=f"%{{text}}<br>{proxy} %{{x:.4f}}<br>{final} %{{y:.4f}}<extra></extra>")
    fig.update_layout(title=title or f"{final} vs {proxy}", xaxis_title=proxy, yaxis_title=final)
    return fig
