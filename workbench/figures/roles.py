"""Figures of a group run's role changes (ORC-style group trainers record ``role/<member>`` per
step: 1 = in the teacher group that step, 0 = in the student group) and of its members' curves.

Inputs are the frames `kd_engine.store.Run.scalars()` returns (columns key, step, epoch, value),
optionally tagged with a ``seed`` column when several runs are pooled.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

__all__ = ["role_members", "role_timeline", "role_share", "member_curves"]

_TEMPLATE = "plotly_white"
_PALETTE = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692")


def role_members(scalars: pd.DataFrame) -> list[str]:
    """Member names that have ``role/<name>`` rows, teachers (T*) first, then in name order."""
    names = {k.split("/", 1)[1] for k in scalars["key"].unique() if str(k).startswith("role/")}
    return sorted(names, key=lambda n: (not n.startswith("T"), len(n), n))


def role_timeline(scalars: pd.DataFrame, title: str | None = None, max_columns: int = 600) -> go.Figure:
    """A heatmap, one row per member and one column per step: the share of the column's steps the
    member spent in the teacher group (1 = always a teacher). Long runs are binned into at most
    `max_columns` columns of consecutive steps, so a column can show a share between 0 and 1."""
    members = role_members(scalars)
    rows = scalars[scalars["key"].isin([f"role/{m}" for m in members])]
    fig = go.Figure()
    if rows.empty:
        fig.update_layout(title={"text": title or "role timeline: no role/<member> scalars recorded"},
                          template=_TEMPLATE, height=260)
        return fig
    table = rows.pivot_table(index="key", columns="step", values="value", aggfunc="mean")
    table = table.reindex([f"role/{m}" for m in members])
    steps = table.columns.to_numpy()
    bins = min(max_columns, len(steps))
    edges = np.array_split(np.arange(len(steps)), bins)
    z = np.stack([table.iloc[:, idx].mean(axis=1).to_numpy() for idx in edges], axis=1)
    x = [int(steps[idx[0]]) for idx in edges]
    fig.add_trace(go.Heatmap(z=z.tolist(), x=x, y=members, zmin=0.0, zmax=1.0,
                             colorscale=[[0.0, "#eef1f8"], [1.0, "#ef553b"]],
                             colorbar={"title": {"text": "teacher"}, "tickvals": [0, 1],
                                       "ticktext": ["student", "teacher"]},
                             hovertemplate="%{y} at step %{x}: teacher share %{z:.2f}<extra></extra>"))
    binned = "" if bins == len(steps) else f" ({len(steps)} steps in {bins} bins)"
    fig.update_layout(title={"text": title or f"role timeline: who is in the teacher group at each step{binned}"},
                      xaxis={"title": {"text": "step"}}, yaxis={"title": {"text": "member"}, "autorange": "reversed"},
                      template=_TEMPLATE, height=120 + 40 * len(members),
                      margin={"l": 60, "r": 10, "t": 50, "b": 40})
    return fig


def role_share(scalars: pd.DataFrame, by: str | None = None, title: str | None = None) -> go.Figure:
    """Bars: the fraction of steps each member spent in the teacher group (its promotion
    frequency); with `by` (e.g. ``seed``) the bar is the mean over groups and each group is a point."""
    members = role_members(scalars)
    rows = scalars[scalars["key"].isin([f"role/{m}" for m in members])].copy()
    rows["member"] = rows["key"].str.slice(len("role/"))
    keys = ["member"] + ([by] if by else [])
    shares = rows.groupby(keys, as_index=False)["value"].mean()
    fig = go.Figure()
    mean = shares.groupby("member")["value"].mean().reindex(members)
    std = shares.groupby("member")["value"].std().reindex(members) if by else None
    fig.add_trace(go.Bar(x=members, y=mean.to_numpy().tolist(), name="mean",
                         error_y={"type": "data", "array": std.fillna(0).to_numpy()} if by else None,
                         marker={"color": [_PALETTE[i % len(_PALETTE)] for i in range(len(members))]}))
    if by:
        fig.add_trace(go.Scatter(x=shares["member"], y=shares["value"], mode="markers", name=by,
                                 marker={"color": "black", "size": 6}, text=shares[by].astype(str),
                                 hovertemplate=f"%{{x}}, {by} %{{text}}: %{{y:.3f}}<extra></extra>"))
    fig.update_layout(title={"text": title or "share of steps in the teacher group (promotion frequency)"},
                      yaxis={"title": {"text": "share of steps"}, "range": [0, 1.05]},
                      template=_TEMPLATE, height=340, showlegend=bool(by),
                      margin={"l": 50, "r": 10, "t": 50, "b": 40})
    return fig


def member_curves(scalars: pd.DataFrame, split: str = "val", metric: str = "acc",
                  title: str | None = None) -> go.Figure:
    """``<split>/member/<name>_<metric>`` per epoch, one line per member (mean over any seeds)."""
    prefix, suffix = f"{split}/member/", f"_{metric}"
    rows = scalars[scalars["key"].str.startswith(prefix) & scalars["key"].str.endswith(suffix)].copy()
    rows["member"] = rows["key"].str.slice(len(prefix), -len(suffix))
    fig = go.Figure()
    for i, (member, part) in enumerate(sorted(rows.groupby("member"), key=lambda kv: (not kv[0].startswith("T"), kv[0]))):
        curve = part.groupby("epoch")["value"].mean()
        fig.add_trace(go.Scatter(x=curve.index.to_numpy(), y=curve.to_numpy(), mode="lines+markers",
                                 name=member, line={"color": _PALETTE[i % len(_PALETTE)], "width": 2,
                                                    "dash": "dash" if member.startswith("T") else "solid"}))
    fig.update_layout(title={"text": title or f"{split} {metric} of each group member per epoch"},
                      xaxis={"title": {"text": "epoch"}}, yaxis={"title": {"text": f"{split} {metric}"}},
                      template=_TEMPLATE, height=340, margin={"l": 50, "r": 10, "t": 50, "b": 40})
    return fig
