"""Instances, Features and Compare views of image-harmonization runs (meta `task: harmonization`).

Rows per training image hold the method's values (reconstruction loss, foreground MSE, the
foreground–background relation loss); evaluation rows the output's and the untouched
composite's MSE, fMSE and PSNR. From the final test pass a few probe images are stored: the page
shows one of them as composite, output and real image with the mask and the output's squared
error, and the relation matrices (foreground positions × 4 background prototypes) of the encoder
on the real image and of the transformed features on the composite: what relation distillation
pulls together. Features: the relation loss per epoch and the relation matrices; Compare: the
"teacher" is the network's own encoder on the real image (shown as the relation pair), and two
runs side by side on their metrics and the same probe image.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st

from kd_engine.store import Run
from workbench import components as ui
from workbench.figures import harmonization_panels, relation_heatmaps, scalar_curves, weight_histogram

TABLE_ROWS = 2000
MAPS = ("composite", "output", "real", "mask", "relation_real", "relation_composite")


def probes(run: Run) -> tuple[list[int], dict[str, np.ndarray]]:
    """(instance ids, {what: array}) of the run's harmonization probe artifacts (test split)."""
    frame = run.artifacts("harmonization")
    ids: list[int] = []
    arrays: dict[str, np.ndarray] = {}
    for name, meta in zip(frame["name"], frame["meta"]):
        meta = json.loads(meta or "{}")
        ids = [int(i) for i in meta.get("instance_ids", ids)]
        arrays[meta.get("what", name.rsplit("/", 1)[-1])] = ui.cached_artifact(str(run.run_dir), name)
    return ids, arrays


def probe_section(run: Run) -> None:
    ids, arrays = probes(run)
    if not ids or not set(MAPS) <= set(arrays):
        st.info("No probe images yet: a harmonization run stores them at its final test evaluation.")
        return
    iid = st.selectbox("Probe image (test split)", ids, key="harm_image")
    k = ids.index(int(iid))
    error = ((arrays["output"][k] - arrays["real"][k]) ** 2).mean(axis=0)
    panels = {"composite": arrays["composite"][k], "output": arrays["output"][k], "real": arrays["real"][k],
              "mask": arrays["mask"][k], "error": error}
    st.plotly_chart(harmonization_panels(panels, title=f"image {iid}: composite, output, real"), key="harm_panels",
                    width="content")
    st.caption("error: the output's squared error per pixel, averaged over RGB.")
    fg = arrays["relation_real"][k]
    size = int(round(np.sqrt(fg.shape[0])))
    cells = np.asarray(arrays["mask"][k], dtype=float)
    pooled = cells.reshape(size, cells.shape[0] // size, size, cells.shape[1] // size).mean(axis=(1, 3)).ravel()
    rows = pooled > 0.5
    st.plotly_chart(relation_heatmaps({"real (encoder)": arrays["relation_real"][k][rows],
                                       "composite (transformed)": arrays["relation_composite"][k][rows]},
                                      title=f"image {iid}: foreground–background relations"), key="harm_relations",
                    width="content")
    gap = float(np.abs(arrays["relation_real"][k][rows] - arrays["relation_composite"][k][rows]).mean()) if rows.any() else float("nan")
    st.caption(f"Rows: the {int(rows.sum())} foreground cells of the bottleneck grid; columns: the 4 background "
               f"prototypes (quadrant averages). Mean |difference| {gap:.4f}: what the relation loss reduces.")


def render(run: Run, split: str, epoch: int, frame: pd.DataFrame, names: list[str]) -> None:
    st.subheader(f"Per-image records at epoch {epoch}")
    numeric = [c for c in frame.columns if c not in ("instance_id", "split", "epoch", "step", "label")
               and pd.api.types.is_numeric_dtype(frame[c]) and frame[c].notna().any()]
    summary = [c for c in ("student_fmse", "composite_fmse", "student_psnr", "fmse", "relation") if c in numeric]
    for col, column in zip(st.columns(max(1, len(summary))), summary):
        col.metric(column.replace("_", " "), f"{frame[column].astype(float).mean():.4f}")
    if numeric:
        column = st.selectbox("Per-image value", numeric, key="harm_value")
        st.plotly_chart(weight_histogram(frame, column=column, title=f"{column} at epoch {epoch} (n={len(frame)})"),
                        key="harm_hist")
    st.subheader("Probe images: composite, output, real and relation matrices")
    probe_section(run)
    st.subheader("All images of this epoch")
    sort_by = st.selectbox("Sort by", numeric or ["instance_id"], key="harm_sort")
    data = frame.dropna(axis=1, how="all").sort_values(sort_by, ascending=False, na_position="last")
    st.dataframe(data.head(TABLE_ROWS), hide_index=True, key="harm_table")


# -- Features ------------------------------------------------------------------------------------
def features(run: Run) -> None:
    st.subheader("Foreground–background relation: composite path against the real-image path")
    if "relation" in run.instance_columns():
        rows = ui.cached_instances(str(run.run_dir), ui.data_token(run), "train", None, ("epoch", "relation"))
        curve = rows.dropna().groupby("epoch", as_index=False)["relation"].mean()
        if len(curve):
            scalars = curve.assign(key="train/relation", step=curve["epoch"], value=curve["relation"])
            fig = scalar_curves(scalars, "train/relation", x="epoch", title="mean relation loss L_rel (train)")
            st.plotly_chart(fig.update_xaxes(dtick=1), key="harm_feat_curve")
            st.caption("Recorded whether or not the loss is optimised (relation_weight 0 records it too).")
    probe_section(run)


# -- Compare -------------------------------------------------------------------------------------
def compare(run: Run) -> None:
    """Within one run there is no teacher model: the real-image path is the target."""
    final = run.final_metrics()
    keys = [(f"{role} {m}", f"test/{role}_{m}") for role in ("student", "composite") for m in ("fmse", "psnr")]
    shown = [(label, final[key]) for label, key in keys if key in final]
    for col, (label, value) in zip(st.columns(max(1, len(shown))), shown):
        col.metric(label, f"{value:.4f}")
    st.caption("A harmonization run has no teacher model: the composite's untouched error is the reference, and "
               "the relation target is the network's own encoder on the real image (below).")
    probe_section(run)


def compare_runs(a: Run, b: Run) -> None:
    """Two harmonization runs: their test metrics and the same probe image's outputs."""
    finals = [a.final_metrics(), b.final_metrics()]
    cols = st.columns(4)
    for i, (label, final) in enumerate(zip(("A", "B"), finals)):
        for j, metric in enumerate(("fmse", "psnr")):
            if f"test/student_{metric}" in final:
                cols[2 * i + j].metric(f"{label} {metric}", f"{final[f'test/student_{metric}']:.4f}")
    (ids_a, arr_a), (ids_b, arr_b) = probes(a), probes(b)
    shared = [i for i in ids_a if i in ids_b]
    if not shared or "output" not in arr_a or "output" not in arr_b:
        st.info("The runs share no probe image (different data or unfinished runs).")
        return
    iid = st.selectbox("Probe image (test split)", shared, key="harm_rr_image")
    ka, kb = ids_a.index(int(iid)), ids_b.index(int(iid))
    st.plotly_chart(harmonization_panels({"composite": arr_a["composite"][ka], "A output": arr_a["output"][ka],
                                          "B output": arr_b["output"][kb], "real": arr_a["real"][ka]},
                                         title=f"image {iid}: run A against run B"), key="harm_rr_panels", width="content")
