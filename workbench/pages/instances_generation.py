"""Instances page for generation (editing) runs (meta `task: generation`).

An editing run turns each source image into an image of a target class. The page shows what the
method decided and what came out: the timestep indicator of the run (the score-gradient entropy
H(t) over the grid, with the timestep it chose), the timesteps and entropies of this epoch's
training rows, the edits of the last test pass as an image grid (source next to its edit, with the
target class and the judge's probability of it), and each edit's success against its distance
from the source.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from kd_engine.store import Run, StoreError
from workbench.figures import image_gallery

PAIRS_SHOWN = 24
TABLE_ROWS = 2000
FIRST_COLUMNS = ["instance_id", "label", "target", "timestep", "entropy", "sds_grad_norm", "identity", "loss",
                 "student_p_target", "student_pred", "student_identity_l2"]


def indicator_figure(meta: dict) -> go.Figure | None:
    """H(t) over the indicator grid, with the chosen t* (and the timestep used, when fixed) marked."""
    ts, hs = meta.get("indicator_t"), meta.get("indicator_entropy")
    if not ts or not hs:
        return None
    fig = go.Figure(go.Scatter(x=ts, y=hs, mode="lines+markers", name="H(t)"))
    if meta.get("t_star") is not None:
        fig.add_vline(x=meta["t_star"], line_dash="dash", annotation_text=f"t* = argmin H = {meta['t_star']}")
    used = meta.get("timestep_used")
    if used is not None and used != meta.get("t_star"):
        fig.add_vline(x=used, line_dash="dot", line_color="firebrick", annotation_text=f"used t = {used}")
    policy = meta.get("timestep_policy", "?")
    fig.update_layout(title=f"score-gradient entropy H(t) over timesteps (policy: {policy})",
                      xaxis_title="timestep t", yaxis_title="H(t), nats", template="plotly_white", height=320)
    return fig


def edits_grid(array: np.ndarray, meta: dict, title: str) -> go.Figure:
    """Source and edit side by side for the first PAIRS_SHOWN pairs of an ``edits`` artifact."""
    k = min(PAIRS_SHOWN, len(array))
    images, titles = [], []
    ids, sources, targets, probs = (meta.get(key, [None] * k) for key in ("instance_id", "source", "target", "p_target"))
    for i in range(k):
        images += [array[i, 0], array[i, 1]]
        titles += [f"#{ids[i]} source {sources[i]}", f"edit → {targets[i]} p={probs[i]}"]
    return image_gallery(images, titles, ncols=12, title=title)


def render(run: Run, split: str, epoch: int, frame: pd.DataFrame, names: list[str]) -> None:
    meta = run.meta()
    st.caption(f"Editing digit {meta.get('source_class', '?')} into {meta.get('target_class', '?')}; "
               f"timestep policy {meta.get('timestep_policy', '?')}, guidance {meta.get('guidance', '?')}, "
               f"λ {meta.get('lam', '?')}.")
    st.subheader("The timestep indicator")
    fig = indicator_figure(meta)
    if fig is None:
        st.info("This run's method recorded no timestep indicator.")
    else:
        st.plotly_chart(fig, key="gen_indicator")
    if "timestep" in frame and frame["timestep"].notna().any():
        rows = frame[frame["timestep"].notna()]
        st.plotly_chart(px.scatter(rows, x="timestep", y="entropy", template="plotly_white", opacity=0.6,
                                   title=f"entropy of each sample's score gradient at its timestep, epoch {epoch} "
                                         f"(n={len(rows)})"), key="gen_rows_entropy")
    st.subheader("Edits")
    try:
        artifacts = run.artifacts(kind="edits")
    except StoreError as exc:
        st.warning(f"The edits could not be read: {exc}")
        artifacts = pd.DataFrame()
    if artifacts.empty:
        st.info("No edits saved yet: the last test pass saves them when the run finishes.")
    for row in artifacts.itertuples():
        info = json.loads(row.meta) if isinstance(row.meta, str) else (row.meta or {})
        array = run.load_artifact(row.name).astype(np.float32)
        st.plotly_chart(edits_grid(array, info, f"edits of the {info.get('split', '?')} split: source | edit "
                                                f"({min(PAIRS_SHOWN, len(array))} of {len(array)})"),
                        key=f"gen_grid_{row.name}", width="content")
    if "student_p_target" in frame and frame["student_p_target"].notna().any():
        rows = frame[frame["student_p_target"].notna()]
        st.plotly_chart(px.scatter(rows, x="student_identity_l2", y="student_p_target", hover_data=["instance_id"],
                                   template="plotly_white",
                                   title=f"edit success (judge's P(target)) vs L2 distance to the source, {split} "
                                         f"epoch {epoch}"), key="gen_tradeoff")
    st.subheader("All instances of this epoch")
    shown = [c for c in FIRST_COLUMNS if c in frame and frame[c].notna().any()]
    st.dataframe(frame[shown].head(TABLE_ROWS), hide_index=True, key="gen_table")
