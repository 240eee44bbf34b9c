"""The Instances, Features and Compare pages on dense-prediction runs (meta `task: dense`).

A dense run records one row per image (losses, weight, distillation terms, pixel accuracy, the
share of pixels where teacher and student disagree) and, from its final test pass, the maps of a
few probe images (`dense_map` artifacts): true, teacher and student label maps, the per-pixel
KL(teacher ‖ student) disparity and, per continuous output (depth, edges of multi-task runs), the
true, teacher and student maps with their disparity |teacher − student|, one row per output. The pages call the functions
here when the run's meta says `task: dense`.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st

from kd_engine.store import Run
from workbench import components as ui
from workbench.figures import dense_panels, iou_bars, iou_frame, paired_scatter, scalar_curves, weight_histogram

TABLE_ROWS = 2000
SEGMENTATION_PANELS = ("image", "true", "teacher", "student", "disparity")
CONTINUOUS_OUTPUTS = ("depth", "edges")  # one row of panels each: true, teacher, student, |teacher − student|
MAP_ORDER = SEGMENTATION_PANELS + tuple(f"{role}_{name}" for name in CONTINUOUS_OUTPUTS
                                        for role in ("true", "teacher", "student")) \
    + tuple(f"{name}_disparity" for name in CONTINUOUS_OUTPUTS)


def probe_maps(run: Run) -> dict[str, dict]:
    """split -> {"ids": [...], "<map>": array} from the run's `dense_map` artifacts."""
    frame = run.artifacts("dense_map")
    out: dict[str, dict] = {}
    for name, meta in zip(frame["name"], frame["meta"]):
        meta = json.loads(meta or "{}")
        entry = out.setdefault(meta.get("split", "test"), {"ids": [int(i) for i in meta.get("instance_ids", [])]})
        entry[meta.get("map", name.rsplit("/", 1)[-1])] = ui.cached_artifact(str(run.run_dir), name)
    return out


def image_maps(run: Run, probes: dict, iid: int) -> dict[str, np.ndarray]:
    """The panels of one probe image, in display order (the image from the run's image bank)."""
    k = probes["ids"].index(iid)
    maps: dict[str, np.ndarray] = {}
    image = ui.cached_images(str(run.run_dir), (iid,)).get(iid)
    if image is not None:
        maps["image"] = ui.display_image(image)
    for key, value in probes.items():
        if key == "ids":
            continue
        label = key.removesuffix("_mask")
        maps[label] = value[k]
    return {name: maps[name] for name in MAP_ORDER if name in maps}


def probe_section(run: Run, names: list[str], key: str) -> bool:
    """Pick one probe image (highest disparity first) and draw its maps; False when none."""
    probes = probe_maps(run)
    if not probes:
        st.info("No probe maps yet: a dense run saves them at its final test evaluation.")
        return False
    split = next(iter(probes)) if len(probes) == 1 else st.radio("Probe split", list(probes), horizontal=True,
                                                                 key=f"{key}_split")
    maps = probes[split]
    ids = list(maps["ids"])
    if "disparity" in maps:
        ranked = np.argsort(-maps["disparity"].reshape(len(ids), -1).mean(axis=1), kind="stable")
        ids = [ids[i] for i in ranked]
    iid = st.selectbox(f"Probe image ({split} split" + (", highest disparity first)" if "disparity" in maps else ")"),
                       ids, key=f"{key}_image")
    panels = image_maps(run, maps, int(iid))
    top = float(maps["disparity"].max()) if "disparity" in maps else None
    seg = {name: panels[name] for name in SEGMENTATION_PANELS if name in panels}
    st.plotly_chart(dense_panels(seg, names, title=f"image {iid}: true, teacher and student maps",
                                 disparity_max=top), key=f"{key}_panels", width="content")
    if "disparity" in panels:
        st.caption("disparity: KL(teacher ‖ student) over classes at each pixel (T = 1), on one colour scale "
                   "for every probe image of the split.")
    for output in CONTINUOUS_OUTPUTS:
        row = {name: panels[name] for name in (f"true_{output}", f"teacher_{output}", f"student_{output}",
                                                f"{output}_disparity") if name in panels}
        if row:
            st.plotly_chart(dense_panels(row, names, title=f"image {iid}: {output}, true, teacher, student and "
                                                           "|teacher − student|"),
                            key=f"{key}_{output}_panels", width="content")
    if any(f"{output}_disparity" in panels for output in CONTINUOUS_OUTPUTS):
        st.caption("Continuous outputs on a 0–1 scale (edges as probabilities); their disparity is the absolute "
                   "difference between the teacher's and the student's map at each pixel.")
    return True


# -- Instances -----------------------------------------------------------------------------------
def instances(run: Run, split: str, epoch: int, frame: pd.DataFrame, names: list[str]) -> None:
    st.subheader(f"Per-image records at epoch {epoch}")
    summary = [(label, column) for label, column in (("mean weight", "weight"), ("student pixel acc", "student_pixel_acc"),
                                                     ("student mIoU", "student_miou"), ("disagreement", "disagreement"),
                                                     ("disparity (KL)", "disparity"))
               if column in frame and frame[column].notna().any()]
    for col, (label, column) in zip(st.columns(max(1, len(summary))), summary):
        col.metric(label, f"{frame[column].astype(float).mean():.4f}")
    numeric = [c for c in frame.columns if c not in ("instance_id", "split", "epoch", "step", "label")
               and pd.api.types.is_numeric_dtype(frame[c]) and frame[c].notna().any()]
    if numeric:
        first = "weight" if "weight" in numeric else numeric[0]
        column = st.selectbox("Per-image value", numeric, index=numeric.index(first), key="dense_value")
        left, right = st.columns(2)
        left.plotly_chart(weight_histogram(frame, column=column, title=f"{column} at epoch {epoch} (n={len(frame)})"),
                          key="dense_hist")
        other = next((c for c in ("teacher_loss", "student_loss") if c in numeric and c != column), None)
        if other:
            right.plotly_chart(paired_scatter(frame, other, column, diagonal=False), key="dense_scatter")
    st.subheader("Probe images: true and predicted maps, teacher–student disparity")
    probe_section(run, names, "dense_inst")
    st.subheader("All images of this epoch")
    sort_by = st.selectbox("Sort by", numeric or ["instance_id"], key="dense_sort")
    data = frame.dropna(axis=1, how="all").sort_values(sort_by, ascending=False, na_position="last")
    st.caption(f"{len(data)} images" + (f" (showing the first {TABLE_ROWS})" if len(data) > TABLE_ROWS else ""))
    st.dataframe(data.head(TABLE_ROWS), hide_index=True, key="dense_table")
    ui.export_buttons(data, f"{run.run_id}_instances_e{epoch}", key="dense_export")


# -- Features ------------------------------------------------------------------------------------
def features(run: Run) -> None:
    names = [str(c) for c in run.meta().get("class_names") or []]
    st.subheader("Per-pixel teacher–student disparity")
    if "disparity" in run.instance_columns():
        rows = ui.cached_instances(str(run.run_dir), ui.data_token(run), "val", None, ("epoch", "disparity"))
        curve = rows.dropna().groupby("epoch", as_index=False)["disparity"].mean()
        if len(curve):
            scalars = curve.assign(key="val/disparity", step=curve["epoch"], value=curve["disparity"])
            fig = scalar_curves(scalars, "val/disparity", x="epoch", title="mean per-pixel disparity (val)")
            st.plotly_chart(fig.update_xaxes(dtick=1), key="dense_feat_curve")
            st.caption("Mean over validation images of the mean per-pixel KL(teacher ‖ student), per epoch.")
    probe_section(run, names, "dense_feat")


# -- Compare -------------------------------------------------------------------------------------
def _final(run: Run) -> tuple[dict, str]:
    final = run.final_metrics()
    return final, "test" if any(k.startswith("test/") for k in final) else "val"


def compare(run: Run) -> None:
    """Teacher against student within a dense run."""
    names = [str(c) for c in run.meta().get("class_names") or []]
    final, split = _final(run)
    roles = [r for r in ("teacher", "student") if f"{split}/{r}_mIoU" in final]
    if not roles:
        st.info("No final metrics yet: they are written when the run finishes.")
        return
    for col, (label, key) in zip(st.columns(4), [(f"{r} {m}", f"{split}/{r}_{m}") for r in roles
                                                 for m in ("mIoU", "pixel_acc")]):
        col.metric(label, f"{final[key]:.4f}")
    rmse = {r: final.get(f"{split}/{r}_rmse") for r in roles if f"{split}/{r}_rmse" in final}
    if rmse:
        for col, (role, value) in zip(st.columns(len(rmse)), rmse.items()):
            col.metric(f"{role} depth RMSE", f"{value:.4f}")
    st.plotly_chart(iou_bars(iou_frame(final, split, roles, names), title=f"IoU per class ({split})"),
                    key="dense_cmp_iou")
    epochs = run.instance_epochs(split)
    if epochs and "teacher" in roles:
        frame = ui.cached_instances(str(run.run_dir), ui.data_token(run), split, int(epochs[-1]))
        if {"teacher_miou", "student_miou"} <= set(frame.columns):
            st.plotly_chart(paired_scatter(frame, "teacher_miou", "student_miou", color="disparity",
                                           title=f"per-image mIoU, teacher vs student ({split})"), key="dense_cmp_scatter")
    probe_section(run, names, "dense_cmp")


def compare_runs(a: Run, b: Run) -> None:
    """One dense run's student against another's: IoU per class and per-image mIoU."""
    names = [str(c) for c in a.meta().get("class_names") or []]
    (fa, sa), (fb, sb) = _final(a), _final(b)
    if sa != sb or f"{sa}/student_mIoU" not in fa or f"{sb}/student_mIoU" not in fb:
        st.info("Both runs need final dense metrics on the same split (mIoU): pick two finished dense runs.")
        return
    cols = st.columns(2)
    cols[0].metric("A student mIoU", f"{fa[f'{sa}/student_mIoU']:.4f}")
    cols[1].metric("B student mIoU", f"{fb[f'{sb}/student_mIoU']:.4f}")
    both = pd.concat([iou_frame(fa, sa, ["student"], names).assign(role="A"),
                      iou_frame(fb, sb, ["student"], names).assign(role="B")])
    st.plotly_chart(iou_bars(both, title=f"student IoU per class ({sa}), run A vs run B"), key="dense_rr_iou")
    ea, eb = a.instance_epochs(sa), b.instance_epochs(sb)
    if ea and eb:
        columns = ("instance_id", "student_miou")
        rows_a = ui.cached_instances(str(a.run_dir), ui.data_token(a), sa, int(ea[-1]), columns)
        rows_b = ui.cached_instances(str(b.run_dir), ui.data_token(b), sb, int(eb[-1]), columns)
        pair = rows_a.merge(rows_b, on="instance_id", suffixes=("_A", "_B"))
        if pair.empty:
            st.warning("The runs share no images on this split (different datasets or split seeds).")
        else:
            st.plotly_chart(paired_scatter(pair, "student_miou_A", "student_miou_B",
                                           title=f"per-image student mIoU ({sa})"), key="dense_rr_scatter")
