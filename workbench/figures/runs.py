"""Figures of recorded runs: curves, instances, features, attention, comparison.

Each function takes the frames `kd_engine.store.Run` returns (or plain arrays for maps and
images) and returns a Plotly figure, so the dashboard and the notebooks draw the same plot.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy.signal import lfilter
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["ema_smooth", "scalar_curves", "weight_histogram", "weight_scatter", "weight_trajectories",
           "disparity_heatmap", "disparity_curves", "map_panels", "image_gallery",
           "confusion_counts", "confusion_matrix", "per_class_accuracy", "tradeoff"]

_PALETTE = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692",
            "#b6e880", "#ff97ff", "#fecb52")
_TEMPLATE = "plotly_white"


def _color(i: int) -> str:
    return _PALETTE[i % len(_PALETTE)]


def ema_smooth(values: Sequence[float], weight: float) -> np.ndarray:
    """TensorBoard's smoothing: an EMA debiased by 1 - weight**n, so the start is not pulled to 0."""
    values = np.asarray(values, dtype=float)
    if weight <= 0 or values.size == 0:
        return values.copy()
    out = values.copy()  # non-finite values pass through and do not update the average
    mask = np.isfinite(values)
    if mask.any():
        ema = lfilter([1 - weight], [1, -weight], values[mask])
        out[mask] = ema / (1 - weight ** np.arange(1, int(mask.sum()) + 1))
    finite = values[np.isfinite(values)]
    if finite.size:  # a convex combination stays in range; clipping removes float noise
        out = np.where(np.isfinite(out), np.clip(out, finite.min(), finite.max()), out)
    return out


def _thin(n: int, max_points: int) -> np.ndarray:
    """Evenly spaced indices, first and last kept: a screen cannot show more points than pixels,
    and sending every step makes a live refresh slow (CSV export keeps them all)."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(int))


def scalar_curves(scalars: pd.DataFrame, key: str, smoothing: float = 0.0, log_y: bool = False,
                  x: str = "step", run_col: str = "run", title: str | None = None,
                  max_points: int = 1500) -> go.Figure:
    """One scalar over training, a line per run; with smoothing the raw line stays faint behind.
    Smoothing uses every point; each drawn line is thinned to at most `max_points`. Built without
    plotly's per-element validation, which dominated a live refresh; the template is the default
    one set in `workbench.figures`."""
    data = scalars[scalars["key"] == key]
    traces = []
    runs = list(pd.unique(data[run_col].to_numpy(dtype=object))) if run_col in data else [None]
    for i, run in enumerate(runs):
        part = data if run is None else data[data[run_col] == run]
        part = part.sort_values(x)
        xs, ys = part[x].to_numpy(), part["value"].astype(float).to_numpy()
        keep = _thin(len(xs), max_points)
        name = str(run) if run is not None else key
        if smoothing > 0:
            traces.append({"type": "scatter", "x": xs[keep].tolist(), "y": ys[keep].tolist(), "mode": "lines",
                           "name": f"{name} (raw)", "opacity": 0.25, "legendgroup": name, "showlegend": False,
                           "line": {"color": _color(i), "width": 1}})
            ys = ema_smooth(ys, smoothing)
        traces.append({"type": "scatter", "x": xs[keep].tolist(), "y": ys[keep].tolist(),
                       "mode": "lines+markers" if len(keep) < 40 else "lines", "name": name,
                       "legendgroup": name, "line": {"color": _color(i), "width": 2}})
    layout = {"title": {"text": title or key}, "xaxis": {"title": {"text": x}},
              "yaxis": {"title": {"text": key}, "type": "log" if log_y else "linear", "tickformat": ".4~g"},
              "height": 340, "margin": {"l": 50, "r": 10, "t": 40, "b": 40},
              "legend": {"font": {"size": 10}, "orientation": "h", "yanchor": "top", "y": -0.25}}
    return go.Figure(data=traces, layout=layout, _validate=False)


def weight_histogram(instances: pd.DataFrame, column: str = "weight", nbins: int = 40,
                     title: str | None = None) -> go.Figure:
    """Distribution of per-instance weights (pass the rows of one epoch)."""
    values = pd.to_numeric(instances[column], errors="coerce").dropna()
    fig = go.Figure()
    fig.add_histogram(x=values.tolist(), nbinsx=nbins, name=column, marker_color=_color(0))
    fig.update_layout(title=title or f"{column} histogram (n={len(values)})", xaxis_title=column,
                      yaxis_title="instances", template=_TEMPLATE, bargap=0.05)
    return fig


def weight_scatter(instances: pd.DataFrame, x: str = "teacher_loss", y: str = "weight",
                   class_names: Sequence[str] | None = None, label_col: str = "label",
                   max_points: int = 5000, title: str | None = None) -> go.Figure:
    """Weight against a per-instance loss, a trace per class; large epochs are sampled evenly."""
    data = instances[[c for c in (x, y, label_col, "instance_id") if c in instances]].dropna(subset=[x, y])
    if len(data) > max_points:
        data = data.sample(max_points, random_state=0)
    fig = go.Figure()
    for i, (label, part) in enumerate(data.groupby(label_col, sort=True)):
        name = class_names[int(label)] if class_names is not None and int(label) < len(class_names) else str(label)
        ids = part["instance_id"].tolist() if "instance_id" in part else None
        fig.add_scattergl(x=part[x].astype(float).tolist(), y=part[y].astype(float).tolist(),
                          mode="markers", name=name, customdata=ids, marker={"size": 5, "color": _color(i)},
                          hovertemplate=f"id %{{customdata}}<br>{x} %{{x:.3f}}<br>{y} %{{y:.3f}}"
                                        f"<extra>{name}</extra>")
    fig.update_layout(title=title or f"{y} vs {x}", xaxis_title=x, yaxis_title=y, template=_TEMPLATE,
                      legend_title_text="class")
    return fig


def weight_trajectories(instances: pd.DataFrame, y: str = "weight", id_col: str = "instance_id",
                        title: str | None = None) -> go.Figure:
    """How each instance's weight moves across epochs: a line per instance."""
    fig = go.Figure()
    for i, (iid, part) in enumerate(instances.groupby(id_col, sort=True)):
        part = part.sort_values("epoch")
        fig.add_scatter(x=part["epoch"].tolist(), y=part[y].astype(float).tolist(),
                        mode="lines+markers", name=f"id {iid}", line={"color": _color(i)})
    fig.update_layout(title=title or f"{y} across epochs", xaxis_title="epoch", yaxis_title=y,
                      template=_TEMPLATE, xaxis_dtick=_epoch_tick(instances["epoch"].unique()))
    return fig


def _epoch_tick(epochs) -> int:
    """Whole-epoch ticks (plotly would label 0.5 on a two-epoch axis)."""
    return max(1, len(list(epochs)) // 10)


def _pair_label(frame: pd.DataFrame) -> pd.Series:
    same = frame["student_layer"] == frame["teacher_layer"]
    return frame["student_layer"].where(same, frame["student_layer"] + " ← " + frame["teacher_layer"])


def disparity_heatmap(features: pd.DataFrame, metric: str = "disparity",
                      title: str | None = None) -> go.Figure:
    """Layer pair × epoch heatmap of one feature metric (rows keep the recorded layer order)."""
    data = features[features["metric"] == metric].assign(pair=lambda f: _pair_label(f))
    table = data.pivot_table(index="pair", columns="epoch", values="value", aggfunc="mean")
    table = table.reindex(list(dict.fromkeys(data["pair"])))
    fig = go.Figure(go.Heatmap(z=table.to_numpy().tolist(), x=[int(c) for c in table.columns],
                               y=table.index.tolist(), colorscale="Viridis", colorbar={"title": metric}))
    fig.update_layout(title=title or f"{metric} by layer and epoch", xaxis_title="epoch",
                      yaxis_title="student ← teacher layer", template=_TEMPLATE, yaxis_autorange="reversed",
                      xaxis_dtick=_epoch_tick(table.columns))
    return fig


def disparity_curves(features: pd.DataFrame, metric: str = "disparity",
                     title: str | None = None) -> go.Figure:
    data = features[features["metric"] == metric].assign(pair=lambda f: _pair_label(f))
    fig = go.Figure()
    for i, pair in enumerate(dict.fromkeys(data["pair"])):
        part = data[data["pair"] == pair].sort_values("epoch")
        fig.add_scatter(x=part["epoch"].tolist(), y=part["value"].astype(float).tolist(),
                        mode="lines+markers", name=pair, line={"color": _color(i)})
    fig.update_layout(title=title or f"{metric} over epochs", xaxis_title="epoch", yaxis_title=metric,
                      template=_TEMPLATE, xaxis_dtick=_epoch_tick(data["epoch"].unique()))
    return fig


def map_panels(maps: Mapping[str, np.ndarray], title: str | None = None,
               diverging: Sequence[str] = ("difference",)) -> go.Figure:
    """Side-by-side 2-D maps (input, teacher, student, difference); names in `diverging` get a
    zero-centred red-blue scale."""
    names = list(maps)
    fig = make_subplots(rows=1, cols=max(1, len(names)), subplot_titles=names, horizontal_spacing=0.04)
    for i, name in enumerate(names, start=1):
        z = np.asarray(maps[name], dtype=float)
        if z.ndim == 3 and z.shape[-1] == 3:
            fig.add_trace(go.Image(z=(np.clip(z, 0, 1) * 255).astype(np.uint8).tolist(), name=name), 1, i)
            continue
        if name in diverging:
            bound = float(np.nanmax(np.abs(z))) or 1.0
            style = {"colorscale": "RdBu_r", "zmin": -bound, "zmax": bound}
        else:
            style = {"colorscale": "gray_r" if name in ("input", "image") else "Viridis"}
        fig.add_trace(go.Heatmap(z=z[::-1].tolist(), showscale=False, name=name,
                                 hovertemplate=f"{name}: %{{z:.3f}}<extra></extra>", **style), 1, i)
    fig.update_xaxes(showticklabels=False, scaleanchor=None)
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(title=title, template=_TEMPLATE, height=300,
                      margin={"l": 10, "r": 10, "t": 60 if title else 40, "b": 10})
    return fig


def image_gallery(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, ncols: int = 8,
                  title: str | None = None) -> go.Figure:
    """A grid of instance images (grey (H, W) or RGB (H, W, 3) in [0, 1]) with a title each."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    rows = max(1, -(-n // ncols))
    titles = list(titles or [""] * n)
    fig = make_subplots(rows=rows, cols=ncols, subplot_titles=titles + [""] * (rows * ncols - n),
                        horizontal_spacing=0.01, vertical_spacing=0.12 / rows)
    for k, img in enumerate(images):
        img = np.asarray(img, dtype=float)
        if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
            img = np.moveaxis(img, 0, -1)
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        r, c = divmod(k, ncols)
        if img.ndim == 3:
            trace = go.Image(z=(np.clip(img, 0, 1) * 255).astype(np.uint8).tolist())
        else:
            trace = go.Heatmap(z=img[::-1].tolist(), colorscale="gray_r", zmin=0, zmax=1, showscale=False,
                               hoverinfo="skip")
        fig.add_trace(trace, r + 1, c + 1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_annotations(font_size=10)
    top = 50 if title else 25
    fig.update_layout(title=title, template=_TEMPLATE, width=max(260, 125 * ncols + 10),
                      height=top + 135 * rows, margin={"l": 5, "r": 5, "t": top, "b": 5})
    return fig


def confusion_counts(true: Sequence[int], pred: Sequence[int], num_classes: int) -> np.ndarray:
    """counts[i, j] = instances of class i predicted as j."""
    t = np.asarray(true, dtype=np.int64)
    p = np.asarray(pred, dtype=np.int64)
    keep = (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
    return np.bincount(t[keep] * num_classes + p[keep], minlength=num_classes ** 2).reshape(
        num_classes, num_classes)


def confusion_matrix(frame: pd.DataFrame, pred_col: str = "student_pred", true_col: str = "label",
                     class_names: Sequence[str] | None = None, normalize: bool = False,
                     title: str | None = None) -> go.Figure:
    data = frame[[true_col, pred_col]].dropna()
    n = len(class_names) if class_names else int(max(data.max().max(), -1)) + 1 if len(data) else 1
    counts = confusion_counts(data[true_col], data[pred_col], n).astype(float)
    z = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalize else counts
    names = [str(c) for c in (class_names or range(n))]
    fig = go.Figure(go.Heatmap(z=z.tolist(), x=names, y=names, colorscale="Blues", showscale=False,
                               text=counts.astype(int).tolist(), texttemplate="%{text}",
                               hovertemplate="true %{y}, predicted %{x}: %{text}<extra></extra>"))
    fig.update_layout(title=title or f"confusion: {pred_col}", xaxis_title="predicted",
                      yaxis_title="true", yaxis_autorange="reversed", template=_TEMPLATE,
                      xaxis_type="category", yaxis_type="category")
    return fig


def per_class_accuracy(frame: pd.DataFrame, pred_cols: Mapping[str, str], true_col: str = "label",
                       class_names: Sequence[str] | None = None, title: str | None = None) -> go.Figure:
    """Grouped bars: per-class accuracy of each predictor (name -> prediction column)."""
    fig = go.Figure()
    for i, (name, col) in enumerate(pred_cols.items()):
        data = frame[[true_col, col]].dropna()
        acc = (data[col].astype(int) == data[true_col].astype(int)).groupby(data[true_col].astype(int)).mean()
        labels = [class_names[k] if class_names and k < len(class_names) else str(k) for k in acc.index]
        fig.add_bar(x=labels, y=acc.tolist(), name=name, marker_color=_color(i))
    fig.update_layout(barmode="group", title=title or "per-class accuracy", xaxis_title="class",
                      yaxis_title="accuracy", yaxis_range=[0, 1.02], template=_TEMPLATE,
                      xaxis_type="category")
    return fig


def tradeoff(frame: pd.DataFrame, x: str = "params", y: str = "accuracy", label_col: str = "label",
             group_col: str = "role", log_x: bool = True, title: str | None = None) -> go.Figure:
    """Accuracy against size (parameters) or speed: a point per model, a trace per group."""
    data = frame.dropna(subset=[x, y])
    fig = go.Figure()
    groups = data.groupby(group_col, sort=False) if group_col in data else [(y, data)]
    for i, (group, part) in enumerate(groups):
        fig.add_scatter(x=part[x].astype(float).tolist(), y=part[y].astype(float).tolist(),
                        mode="markers+text", name=str(group), text=part[label_col].astype(str).tolist(),
                        textposition="top center", textfont={"size": 9},
                        marker={"size": 11, "color": _color(i)})
    fig.update_layout(title=title or f"{y} vs {x}", xaxis_title=x, yaxis_title=y, template=_TEMPLATE,
                      xaxis_type="log" if log_x else "linear")
    return fig
