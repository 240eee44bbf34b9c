"""The Features and Compare pages on BEV heatmap-detection runs (meta `task: bev`).

A BEV run saves, at its last test pass, the maps of a few probe scenes (`bev_map` artifacts named
`bev/<split>/<map>`): the BEV input, the true, teacher and student heatmaps and the teacher–student
disparity maps (1 − cos of the features over 3×3 windows, binary KL of the heatmaps). The final
metrics hold centre-distance AP per class for each role. The Instances page draws a probe scene
with the regions the method selected (`instances_bev`); these views put the disparity maps,
and the two roles or two runs, beside each other, with the same figures.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st

from kd_engine.store import Run
from workbench import components as ui
from workbench.figures.bev import bev_scene_figure
from workbench.figures.bev_masks import method_maps_figure
from workbench.pages.instances_bev import _artifacts as stored_maps

DISPARITY_MAPS = {"feature_disparity": "1 − cos of features (3×3 windows)",
                  "heatmap_disparity": "binary KL of heatmaps"}


class ProbeScenes:
    """The probe scenes one run stored for one split: ids, and each map by scene id."""

    def __init__(self, run: Run, split: str):
        self.run, self.split = run, split
        self.names = stored_maps(run, split)
        meta = {}
        if "input" in self.names:
            meta = json.loads(run.artifacts("bev_map").set_index("name").loc[self.names["input"], "meta"] or "{}")
        self.ids = [int(i) for i in meta.get("instance_ids", [])]
        self.channels = meta.get("channels")

    def has(self, what: str) -> bool:
        return what in self.names

    def map(self, what: str, scene: int) -> np.ndarray:
        return ui.cached_artifact(str(self.run.run_dir), self.names[what])[self.ids.index(int(scene))]


def probe_splits(run: Run) -> list[str]:
    """Splits with stored probe scenes (test first)."""
    names = run.artifacts("bev_map").get("name", pd.Series(dtype=str))
    found = {n.split("/")[1] for n in names if n.startswith("bev/") and n.endswith("/input")}
    return sorted(found, key=lambda s: (s != "test", s))


def _pick_split(run: Run, key: str) -> str | None:
    splits = probe_splits(run)
    if not splits:
        st.info("No BEV probe scenes stored yet (they are saved at the run's last test pass).")
        return None
    return splits[0] if len(splits) == 1 else st.radio("Probe split", splits, horizontal=True, key=f"{key}_split")


def ap_table(columns: dict[str, tuple[dict, str]], classes: list[str], split: str) -> pd.DataFrame:
    """Rows: mAP then each class; one column per `columns` entry ({label: (final metrics, role)})."""
    rows = []
    for name, key in [("mAP", "mAP")] + [(c, f"AP_{c}") for c in classes]:
        rows.append({"class": name, **{label: final.get(f"{split}/{role}_{key}", np.nan)
                                       for label, (final, role) in columns.items()}})
    return pd.DataFrame(rows)


# -- Features ------------------------------------------------------------------------------------
def features(run: Run) -> None:
    st.subheader("Teacher–student disparity on probe scenes")
    final = run.final_metrics()
    scalars = {k: v for k, v in final.items() if k.endswith("/disparity")}
    recorded = run.features()
    last = recorded[recorded["epoch"] == recorded["epoch"].max()]  # the last epoch's CKA per layer pair
    for _, row in last[last["metric"].isin(["cka", "disparity"])].iterrows():
        pair = row["student_layer"] if row["student_layer"] == row["teacher_layer"] else \
            f"{row['student_layer']} ← {row['teacher_layer']}"
        scalars[f"{row['metric']} {pair} (epoch {int(row['epoch'])})"] = row["value"]
    if scalars:
        for col, (name, value) in zip(st.columns(min(len(scalars), 4)), scalars.items()):
            col.metric(name, f"{value:.4g}")
        st.caption("disparity = 1 − linear CKA on the recorded feature pairs; `<split>/disparity` is the mean "
                   "per-cell feature disparity over that split's scenes.")
    split = _pick_split(run, "bev_feat")
    if split is None:
        return
    probes = ProbeScenes(run, split)
    maps = [m for m in DISPARITY_MAPS if probes.has(m)]
    if not maps:
        st.info(f"This run stored no disparity maps for the {split} split.")
        return
    scene = st.selectbox("Probe scene", probes.ids, key="bev_feat_scene")
    disparity = {m: probes.map(m, scene) for m in maps}
    st.plotly_chart(method_maps_figure(probes.map("input", scene), disparity, probes.channels,
                                       title=f"scene #{scene} ({split}): input and teacher–student disparity"),
                    key="bev_feat_maps")
    summary = pd.DataFrame([{"map": m, "meaning": DISPARITY_MAPS[m], "mean": float(np.mean(v)),
                             "max": float(np.max(v))} for m, v in disparity.items()])
    st.dataframe(summary, hide_index=True, key="bev_feat_summary")


# -- Compare -------------------------------------------------------------------------------------
def compare(run: Run) -> None:
    """Teacher against student within one BEV run: their heatmaps on one scene, AP per class."""
    classes = [str(c) for c in run.meta().get("class_names") or []]
    final = run.final_metrics()
    roles = [r for r in ("teacher", "student") if f"test/{r}_mAP" in final]
    if roles:
        st.subheader("Centre-distance AP per class (test)")
        st.dataframe(ap_table({r: (final, r) for r in roles}, classes, "test"), hide_index=True, key="bev_cmp_ap")
    else:
        st.info("No final AP yet: it is written when the run finishes.")
    split = _pick_split(run, "bev_cmp")
    if split is None:
        return
    probes = ProbeScenes(run, split)
    scene = st.selectbox("Probe scene", probes.ids, key="bev_cmp_scene")
    heatmaps = {r: probes.map(f"{r}_heatmap", scene) for r in ("true", "teacher", "student") if probes.has(f"{r}_heatmap")}
    disparity = next((m for m in DISPARITY_MAPS if probes.has(m)), None)
    st.plotly_chart(bev_scene_figure(probes.map("input", scene), heatmaps,
                                     probes.map(disparity, scene) if disparity else None,
                                     disparity_label=DISPARITY_MAPS.get(disparity, ""),
                                     title=f"scene #{scene} ({split}): teacher and student heatmaps"),
                    key="bev_cmp_scene_fig")


def compare_runs(a: Run, b: Run) -> None:
    """One BEV run's student against another's: AP per class, and both heatmaps on a shared scene."""
    classes = [str(c) for c in a.meta().get("class_names") or []]
    fa, fb = a.final_metrics(), b.final_metrics()
    if "test/student_mAP" not in fa or "test/student_mAP" not in fb:
        st.info("Both runs need final centre-distance AP on the test split: pick two finished BEV runs.")
        return
    st.subheader("Student centre-distance AP per class (test)")
    st.dataframe(ap_table({"A": (fa, "student"), "B": (fb, "student")}, classes, "test"), hide_index=True,
                 key="bev_rr_ap")
    pa, pb = ProbeScenes(a, "test"), ProbeScenes(b, "test")
    shared = [i for i in pa.ids if i in pb.ids]
    if not shared or not (pa.has("student_heatmap") and pb.has("student_heatmap")):
        st.info("The runs stored no test probe scene in common.")
        return
    scene = st.selectbox("Probe scene (stored by both runs)", shared, key="bev_rr_scene")
    if not np.array_equal(pa.map("input", scene), pb.map("input", scene)):
        st.warning(f"Scene #{scene} differs between the runs (different data settings): the heatmaps are "
                   "not of the same scene.")
    heatmaps = {"true": pa.map("true_heatmap", scene)} if pa.has("true_heatmap") else {}
    heatmaps.update({"A student": pa.map("student_heatmap", scene), "B student": pb.map("student_heatmap", scene)})
    st.plotly_chart(bev_scene_figure(pa.map("input", scene), heatmaps,
                                     title=f"scene #{scene} (test): run A's and run B's student heatmaps"),
                    key="bev_rr_scene_fig")
