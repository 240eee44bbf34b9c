"""The Instances page on open-vocabulary segmentation runs (meta `task: open_vocab_seg`, ZeroSeg).

Everything a dense run shows (`dense_views`: per-image records, the probe images' true, teacher
and student maps), then what the method decided: per image, the token matched to each teacher
view (``view_token_<v>``; bars of how often each token was matched: one tall bar is a collapse)
and, for the probe images of the final test pass (`segment_map` artifacts), the assignment map
(the segment token each pixel belongs to) next to the truth, with each segment's zero-shot class
and each view's matched token. The Features and Compare pages use the dense views as they are.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st

from kd_engine.store import Run
from workbench import components as ui
from workbench.figures import segment_panels, token_usage_bars
from workbench.pages import dense_views


def segment_maps(run: Run) -> dict[str, dict]:
    """split -> {"ids": [...], "grids": [...], "<map>": array} from the run's `segment_map` artifacts."""
    frame = run.artifacts("segment_map")
    out: dict[str, dict] = {}
    for name, meta in zip(frame["name"], frame["meta"]):
        meta = json.loads(meta or "{}")
        entry = out.setdefault(meta.get("split", "test"), {"ids": [int(i) for i in meta.get("instance_ids", [])],
                                                           "grids": meta.get("grids", [1])})
        entry[meta.get("map", name.rsplit("/", 1)[-1])] = ui.cached_artifact(str(run.run_dir), name)
    return out


def view_names(grids) -> list[str]:
    return [("whole image" if g == 1 else f"{g}x{g} cell {i}") for g in grids for i in range(g * g)]


def segments_section(run: Run, frame: pd.DataFrame, names: list[str]) -> None:
    view_cols = sorted((c for c in frame.columns if c.startswith("view_token_")), key=lambda c: int(c.rsplit("_", 1)[1]))
    maps = segment_maps(run)
    named_all = maps.get("test", {}).get("segment_class")  # (probes, K): the number of segment tokens
    k = int(named_all.shape[1]) if named_all is not None else 0
    if view_cols and frame[view_cols].notna().any().any():
        k = k or int(np.nanmax(frame[view_cols].to_numpy(dtype=float))) + 1
        cols = st.columns(3)
        for col, (label, column) in zip(cols, (("segments used per image", "segments_used"),
                                               ("segment-usage entropy (nats)", "assign_entropy"),
                                               ("cos(image, whole-image target)", "whole_cos"))):
            if column in frame and frame[column].notna().any():
                col.metric(label, f"{frame[column].astype(float).mean():.3f}")
        st.plotly_chart(token_usage_bars(frame, view_cols, max(k, 1), title="views matched to each segment token "
                                         "(reconstruction; one tall bar = collapse)"), key="seg_usage")
    else:
        st.caption("This run matched no views to segment tokens (an image-level run has no segment tokens).")
    probes = maps.get("test")
    if not probes or "assign" not in probes:
        st.info("No assignment maps: they are saved at the final test pass of a run with segment tokens.")
        return
    dense = dense_views.probe_maps(run).get("test", {})
    iid = int(st.selectbox("Probe image (test split)", probes["ids"], key="seg_probe"))
    i = probes["ids"].index(iid)
    panels: dict[str, np.ndarray] = {}
    image = ui.cached_images(str(run.run_dir), (iid,)).get(iid)
    if image is not None:
        panels["image"] = ui.display_image(image)
    if dense and iid in dense.get("ids", []):
        j = dense["ids"].index(iid)
        for key in ("true", "teacher", "student"):
            if f"{key}_mask" in dense:
                panels[key] = dense[f"{key}_mask"][j]
    panels["assign"] = probes["assign"][i]
    named = probes.get("segment_class")
    segment_class = None if named is None else [int(c) for c in named[i]]
    st.plotly_chart(segment_panels(panels, names, segment_class, k or None,
                                   title=f"image {iid}: truth, teacher (crop windows), student, segment assignment "
                                         f"(reconstruction)"), key="seg_panels", width="content")
    if "view_token" in probes:
        tokens = probes["view_token"][i]
        rows = [{"view": view, "matched token": int(t) if t >= 0 else None,
                 "token's zero-shot class": (names[segment_class[int(t)]] if segment_class and t >= 0 else None)}
                for view, t in zip(view_names(probes["grids"]), tokens)]
        st.dataframe(pd.DataFrame(rows), hide_index=True, key="seg_views")
        st.caption("A blank view (no ink) has no target and no matched token.")


def instances(run: Run, split: str, epoch: int, frame: pd.DataFrame, names: list[str]) -> None:
    dense_views.instances(run, split, epoch, frame, names)
    st.subheader("Segment tokens: matched views and assignment maps")
    segments_section(run, frame, names)
