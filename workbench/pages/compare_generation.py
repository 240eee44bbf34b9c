"""Compare, run against run, for two generation (editing) runs (meta `task: generation`).

Two editing runs differ in how each edit came out, not in a confusion matrix: per shared test
instance, each run's judged success P(target) and distance to the source, and the two runs' edits
of the same sources side by side (source | run A's edit | run B's edit).
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from kd_engine.store import Run, StoreError
from workbench import components as ui
from workbench.figures import image_gallery

PAIRS_SHOWN = 12
COLUMNS = ("instance_id", "student_p_target", "student_identity_l2")


def _edits(run: Run) -> tuple[np.ndarray, list[int]] | None:
    try:
        artifacts = run.artifacts(kind="edits")
        row = artifacts[artifacts["name"] == "edits/test"]
        if row.empty:
            return None
        meta = row["meta"].iloc[0]
        info = json.loads(meta) if isinstance(meta, str) else (meta or {})
        return run.load_artifact("edits/test").astype(np.float32), list(info.get("instance_id", []))
    except StoreError:
        return None


def last_epoch(run: Run, split: str) -> pd.DataFrame:
    epoch = run.instance_epochs(split)[-1]
    return ui.cached_instances(str(run.run_dir), ui.data_token(run), split, int(epoch), COLUMNS)


def render(a: Run, b: Run, split: str) -> None:
    if a.meta().get("task") != b.meta().get("task"):  # edits are compared with edits only
        st.info("Run against run compares two generation (editing) runs: pick two of them.")
        return
    fa, fb = last_epoch(a, split), last_epoch(b, split)
    if "student_p_target" not in fa or "student_p_target" not in fb or split == "train":
        st.info("Edits are judged on the evaluation splits: choose val or test.")
        return
    cols = list(COLUMNS)
    frame = fa[cols].merge(fb[cols], on="instance_id", suffixes=("_a", "_b"))
    if frame.empty:
        st.warning("The runs share no instances on this split (different datasets or split seeds).")
        return
    c = st.columns(4)
    c[0].metric("A edit success", f"{frame['student_p_target_a'].mean():.4f}")
    c[1].metric("B edit success", f"{frame['student_p_target_b'].mean():.4f}")
    c[2].metric("A L2 to source", f"{frame['student_identity_l2_a'].mean():.3f}")
    c[3].metric("B L2 to source", f"{frame['student_identity_l2_b'].mean():.3f}")
    st.plotly_chart(px.scatter(frame, x="student_p_target_a", y="student_p_target_b", hover_data=["instance_id"],
                               template="plotly_white", range_x=[0, 1], range_y=[0, 1],
                               title=f"per-instance edit success, A vs B ({split}, n={len(frame)})"),
                    key="cmp_gen_success")
    ea, eb = _edits(a), _edits(b)
    if ea is None or eb is None:
        st.info("Side-by-side edits need both runs' final test pass (`edits/test`).")
        return
    where_b = {i: k for k, i in enumerate(eb[1])}
    shared = [(k, where_b[i], i) for k, i in enumerate(ea[1]) if i in where_b][:PAIRS_SHOWN]
    images, titles = [], []
    for ka, kb, iid in shared:
        images += [ea[0][ka, 0], ea[0][ka, 1], eb[0][kb, 1]]
        titles += [f"#{iid} source", "A edit", "B edit"]
    st.plotly_chart(image_gallery(images, titles, ncols=12, title="test edits: source | A | B"),
                    key="cmp_gen_grid", width="content")
