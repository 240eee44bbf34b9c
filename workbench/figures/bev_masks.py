"""What a BEV method weighs each cell by, for one scene: each input channel on its own (a teacher
and a student may read different ones, as in DistillBEV's LiDAR and camera views) beside the
method's per-cell maps (foreground and scale masks, the teacher's spatial attention,
false-positive regions). Row 0 at the bottom, as in `workbench.figures.bev`."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["method_maps_figure", "LOG_MAPS"]

LOG_MAPS = ("scale",)  # maps whose values span decades (1/N_bg against an object's weight): shown as log10


def method_maps_figure(bev_input: np.ndarray, maps: dict[str, np.ndarray], channels: Sequence[str] | None = None,
                       title: str | None = None) -> go.Figure:
    """One panel per input channel of ``bev_input`` (C, H, W), named by ``channels``, then one per
    map of ``maps`` (name -> (h, w)); a map named in `LOG_MAPS` is drawn as log10 of its positive
    values (the title says so)."""
    bev_input = np.asarray(bev_input, float)
    names = list(channels or [f"input channel {c}" for c in range(len(bev_input))])[: len(bev_input)]
    panels = [(f"input: {n}", bev_input[c], "gray_r") for c, n in enumerate(names)]
    for name, value in maps.items():
        value = np.asarray(value, float)
        if name in LOG_MAPS:
            positive = value[value > 0]
            floor = positive.min() if len(positive) else 1.0
            panels.append((f"{name} (log10)", np.log10(np.where(value > 0, value, floor)), "Viridis"))
        else:
            panels.append((name.replace("_", " "), value, "Viridis"))
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels], horizontal_spacing=0.02)
    for col, (label, z, scale) in enumerate(panels, start=1):
        fig.add_trace(go.Heatmap(z=z.tolist(), colorscale=scale, showscale=False,
                                 hovertemplate=f"row %{{y}}, col %{{x}}: {label} %{{z:.4f}}<extra></extra>"), 1, col)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_annotations(font_size=10)
    fig.update_layout(title=title, height=260, width=max(700, 200 * len(panels)), template="plotly_white",
                      margin={"l": 10, "r": 10, "t": 70 if title else 40, "b": 10})
    return fig
