"""Figures of object-detection runs: images with their GT boxes coloured by distillation weight.

Plain functions of arrays and DataFrames (like `workbench.figures.runs`), so the dashboard's
Instances page and the notebooks draw the same gallery.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.colors as pcolors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["boxes_frame", "image_weights", "weight_colors", "class_label", "detection_gallery"]

_TEMPLATE = "plotly_white"
_NO_WEIGHT = "rgb(160, 160, 160)"
BOX_COLUMNS = ("x0", "y0", "x1", "y1")


def boxes_frame(gt_boxes: np.ndarray) -> pd.DataFrame:
    """The `gt_boxes` artifact (rows [image_id, label, x0, y0, x1, y1]) as a DataFrame, with each
    box's index within its image as `gt` (the order the trainer's per-GT rows use)."""
    arr = np.asarray(gt_boxes, dtype=float).reshape(-1, 6)
    frame = pd.DataFrame(arr, columns=["image_id", "label", *BOX_COLUMNS])
    frame[["image_id", "label"]] = frame[["image_id", "label"]].round().astype(int)
    return frame.assign(gt=frame.groupby("image_id").cumcount())


def image_weights(weights: pd.DataFrame | pd.Series | Mapping[int, float] | None,
                  value: str = "weight") -> dict[int, float]:
    """image id -> weight from a mapping, a Series indexed by id, or a frame with an
    `image_id` (or `instance_id`) column; several rows of an image (its FPN levels) are averaged."""
    if weights is None:
        return {}
    if isinstance(weights, pd.DataFrame):
        id_col = "image_id" if "image_id" in weights else "instance_id"
        weights = pd.to_numeric(weights[value], errors="coerce").groupby(weights[id_col].astype(int)).mean()
    items = weights.items() if isinstance(weights, (pd.Series, Mapping)) else []
    return {int(k): float(v) for k, v in items}


def weight_colors(values: Sequence[float], colorscale: str | list = "Viridis",
                  cmin: float | None = None, cmax: float | None = None) -> list[str]:
    """A colour per weight on `colorscale` between cmin and cmax (grey where the weight is missing),
    the same mapping plotly's colour axis uses, so boxes and colorbar agree."""
    vals = np.asarray(values, dtype=float)
    finite = vals[np.isfinite(vals)]
    lo = float(cmin) if cmin is not None else float(finite.min()) if finite.size else 0.0
    hi = float(cmax) if cmax is not None else float(finite.max()) if finite.size else 1.0
    span = hi - lo if hi > lo else 1.0
    points = np.clip((np.nan_to_num(vals, nan=lo) - lo) / span, 0.0, 1.0)
    sampled = pcolors.sample_colorscale(colorscale, points.tolist()) if len(points) else []
    return [c if np.isfinite(v) else _NO_WEIGHT for c, v in zip(sampled, vals)]


def _rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, dtype=float)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return (np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8)


def class_label(names: Sequence[str] | None, label) -> str:
    """Detection labels are 1..K (0 is background), so class k is names[k - 1]."""
    try:
        k = int(label)
    except (TypeError, ValueError):
        return "?"
    return str(names[k - 1]) if names and 1 <= k <= len(names) else str(k)


def detection_gallery(images: Mapping[int, np.ndarray], boxes: pd.DataFrame | None = None,
                      weights: pd.DataFrame | pd.Series | Mapping[int, float] | None = None,
                      titles: Sequence[str] | None = None, class_names: Sequence[str] | None = None,
                      ncols: int = 4, colorscale: str = "Viridis", cmin: float | None = None,
                      cmax: float | None = None, title: str | None = None) -> go.Figure:
    """Images (in the order of `images`) with their GT boxes outlined in the colour of a weight.

    `boxes`: one row per GT box with image_id (or instance_id), label (1..K) and x0, y0, x1, y1 in
    pixels; a box's own `weight` (per-GT records) colours it, and a box without one takes its
    image's weight from `weights` (image id -> weight, e.g. the mean over FPN levels). One shape
    per box, in the order of `boxes` within each image; a marker on each box's top-left corner
    carries the shared colour axis (its colorbar) and the hover text. cmin/cmax fix the scale, so
    two galleries (highest and lowest weighted) can share it.
    """
    ids = [int(i) for i in images]
    per_image = image_weights(weights)
    data = pd.DataFrame(columns=["image_id", "label", *BOX_COLUMNS]) if boxes is None else boxes
    if "image_id" not in data and "instance_id" in data:
        data = data.rename(columns={"instance_id": "image_id"})
    data = data[data["image_id"].isin(ids)].dropna(subset=list(BOX_COLUMNS))
    own = pd.to_numeric(data["weight"], errors="coerce") if "weight" in data else pd.Series(np.nan, data.index)
    box_w = own.where(own.notna(), data["image_id"].astype(int).map(per_image)).astype(float)
    shown = np.asarray([*box_w.tolist(), *[per_image[i] for i in ids if i in per_image]], dtype=float)
    shown = shown[np.isfinite(shown)]
    lo = float(cmin) if cmin is not None else float(shown.min()) if shown.size else 0.0
    hi = float(cmax) if cmax is not None else float(shown.max()) if shown.size else 1.0
    colors = pd.Series(weight_colors(box_w.tolist(), colorscale, lo, hi), index=data.index, dtype=object)

    n = max(1, len(ids))
    ncols = max(1, min(ncols, n))
    rows = -(-n // ncols)
    if titles is None:
        titles = [f"#{i}" + (f" w={per_image[i]:.3f}" if np.isfinite(per_image.get(i, np.nan)) else "")
                  for i in ids]
    titles = list(titles) + [""] * (rows * ncols - len(ids))
    fig = make_subplots(rows=rows, cols=ncols, subplot_titles=titles, horizontal_spacing=0.02,
                        vertical_spacing=0.1 / rows)
    for k, iid in enumerate(ids):
        r, c = divmod(k, ncols)
        rgb = _rgb(images[iid])
        h, w = rgb.shape[:2]
        fig.add_trace(go.Image(z=rgb.tolist(), x0=0.5, y0=0.5, name=f"#{iid}", hoverinfo="skip"), r + 1, c + 1)
        part = data[data["image_id"] == iid]
        for idx, box in part.iterrows():
            fig.add_shape(type="rect", x0=box["x0"], y0=box["y0"], x1=box["x1"], y1=box["y1"],
                          line={"color": colors[idx], "width": 2}, row=r + 1, col=c + 1)
        if len(part):
            hover = [f"#{iid} {class_label(class_names, lab)}" + (f"<br>w={wt:.4f}" if np.isfinite(wt) else "")
                     for lab, wt in zip(part["label"], box_w[part.index])]
            fig.add_scatter(x=part["x0"].astype(float).tolist(), y=part["y0"].astype(float).tolist(),
                            mode="markers", name=f"#{iid} boxes", text=hover, hoverinfo="text", showlegend=False,
                            marker={"color": box_w[part.index].tolist(), "coloraxis": "coloraxis",
                                    "size": 6, "symbol": "square"}, row=r + 1, col=c + 1)
        fig.update_xaxes(range=[0, w], row=r + 1, col=c + 1)
        fig.update_yaxes(range=[h, 0], row=r + 1, col=c + 1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_annotations(font_size=10)
    top = 50 if title else 25
    fig.update_layout(title=title, template=_TEMPLATE, showlegend=False,
                      coloraxis={"colorscale": colorscale, "cmin": lo, "cmax": hi if hi > lo else lo + 1e-9,
                                 "colorbar": {"title": {"text": "weight"}, "thickness": 12}},
                      width=max(320, 160 * ncols + 90), height=top + 170 * rows,
                      margin={"l": 5, "r": 5, "t": top, "b": 5})
    return fig
