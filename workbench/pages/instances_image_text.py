"""Instances page for two-tower image–text runs (meta `task: image_text`).

What the method decided per pair: on the training split, each pair's in-batch image→text rank
(student and teacher) and how far the student's affinity row is from the teacher's
(``affinity_kl``); on an evaluated split, each image's rank among the split's distinct captions
and its zero-shot digit; and at the last test pass the teacher's and the student's affinity
matrices of one batch (the split's first pairs), side by side with the captions.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from kd_engine.store import Run, StoreError
from workbench.figures.image_text import affinity_matrices, rank_histogram

TABLE_ROWS = 2000
FIRST_COLUMNS = ["instance_id", "label", "rank", "teacher_rank", "affinity_kl", "student_loss", "distill_loss",
                 "infonce", "student_rank", "teacher_rank", "student_zero_shot", "teacher_zero_shot",
                 "student_positive", "teacher_positive"]


def load_affinities(run: Run) -> tuple[dict[str, np.ndarray], list[str] | None, list[int] | None]:
    """The run's saved affinity matrices by role (teacher first), their captions and pair ids."""
    matrices, captions, ids = {}, None, None
    for row in run.artifacts(kind="affinity").itertuples():
        info = json.loads(row.meta) if isinstance(row.meta, str) else (row.meta or {})
        matrices[row.role or row.name] = run.load_artifact(row.name).astype(np.float32)
        captions, ids = info.get("captions"), info.get("instance_ids")
    order = sorted(matrices, key=lambda r: {"teacher": 0, "student": 1}.get(r, 2))
    return {r: matrices[r] for r in order}, captions, ids


def affinity_section(run: Run) -> None:
    try:
        matrices, captions, ids = load_affinities(run)
    except StoreError as exc:
        st.warning(f"The affinity matrices could not be read: {exc}")
        return
    if not matrices:
        st.info("No affinity matrices yet: the last test pass saves them when the run finishes.")
        return
    st.plotly_chart(affinity_matrices(matrices, captions,
                                      title=f"image–caption cosines of one test batch ({len(ids or [])} pairs)"),
                    key="it_affinity")
    if ids:
        table = pd.DataFrame({"pair": range(len(ids)), "instance_id": ids, "caption": captions})
        for role, m in matrices.items():
            table[f"{role}_top"] = m.argmax(1)
            table[f"{role}_own_cos"] = np.diag(m).round(3)
        st.dataframe(table, hide_index=True, key="it_affinity_table")


def render(run: Run, split: str, epoch: int, frame: pd.DataFrame, names: list[str]) -> None:
    meta = run.meta()
    parts = [f"InfoNCE scale {meta['infonce_scale']}" if "infonce_scale" in meta else None,
             f"distillation scale {meta['distill_scale']}, α {meta.get('alpha')}" if "distill_scale" in meta else None,
             f"weights inherited from the teacher: {len(meta.get('inherited') or {})} tensors" if meta.get("inherit") else None]
    st.caption("Two-tower image–text run. " + "; ".join(p for p in parts if p))
    ranks = [c for c in ("rank", "teacher_rank", "student_rank") if c in frame and frame[c].notna().any()]
    if ranks:
        where = "in-batch" if split == "train" else f"among the {split} split's distinct captions"
        st.plotly_chart(rank_histogram(frame, ranks, f"image→text rank {where}, epoch {epoch}"), key="it_ranks")
    if "affinity_kl" in frame and frame["affinity_kl"].notna().any():
        st.plotly_chart(px.histogram(frame, x="affinity_kl", nbins=40, template="plotly_white",
                                     title=f"KL(teacher row ‖ student row) per pair, epoch {epoch}"), key="it_kl")
    st.subheader("Teacher and student affinities of one batch")
    affinity_section(run)
    st.subheader("All pairs of this epoch")
    shown = list(dict.fromkeys(c for c in FIRST_COLUMNS if c in frame and frame[c].notna().any()))
    st.dataframe(frame[shown].head(TABLE_ROWS), hide_index=True, key="it_table")
