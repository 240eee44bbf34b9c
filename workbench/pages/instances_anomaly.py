"""Instances page for anomaly-detection runs (meta `task: anomaly`).

Training rows are normal images only: their cosine KD loss (how far the student still is from
the teacher) and what the method recorded per image (e.g. the entropy of its memory reads).
Evaluation rows carry each image's anomaly score and kind (normal, other digit, pasted patch):
the page shows the AUROCs, the score distribution of normal against anomalous images, and the
anomaly maps of the highest- or lowest-scored images of a kind (pixel ground truth outlined).
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from kd_engine.store import Run
from workbench import components as ui
from workbench.figures import anomaly_map_grid, score_histogram, weight_histogram

TABLE_ROWS = 2000
FIRST_COLUMNS = ["instance_id", "label", "kind", "digit", "anomaly_score", "student_loss", "memory_entropy"]


def kind_names(run: Run) -> dict[int, str]:
    names = run.meta().get("kind_names") or {"0": "normal"}
    return {int(k): str(v) for k, v in names.items()}


def metrics_section(run: Run, split: str) -> None:
    final = run.final_metrics() if split == "test" else {}
    shown = {k.split("student_", 1)[1]: v for k, v in final.items()
             if k.startswith(f"{split}/student_") and "auroc" in k}
    if not shown:
        st.caption("AUROCs are computed on evaluation splits with normal and anomalous images "
                   "(the test split's appear when the run finishes).")
        return
    for col, (name, value) in zip(st.columns(len(shown)), sorted(shown.items())):
        col.metric(name.replace("_", " "), f"{value:.4f}")


def maps_section(run: Run, split: str, frame: pd.DataFrame, names: dict[int, str]) -> None:
    index = ui.artifact_index(run, "anomaly_map")
    index = index[index["name"] == f"anomaly_maps/{split}"] if not index.empty else index
    if index.empty:
        st.info(f"No anomaly maps stored for the {split} split (they are saved at the last test pass).")
        return
    ids = list(index["ids"].iloc[0])
    maps = ui.cached_artifact(str(run.run_dir), f"anomaly_maps/{split}")
    stored = run.artifacts("anomaly_mask")
    masks = None
    if (stored["name"] == f"anomaly_masks/{split}").any():
        masks = ui.cached_artifact(str(run.run_dir), f"anomaly_masks/{split}")
    left, middle, right = st.columns([2, 2, 1])
    kinds = sorted(int(k) for k in frame["kind"].dropna().unique())
    kind = left.selectbox("Kind", kinds, format_func=lambda k: names.get(k, str(k)), key="anom_kind")
    order = middle.radio("Show", ["highest scores", "lowest scores"], horizontal=True, key="anom_order")
    k = right.number_input("Images", 1, 12, 6, key="anom_k")
    part = frame[frame["kind"] == kind].sort_values(["anomaly_score", "instance_id"],
                                                    ascending=order == "lowest scores")
    part = part[part["instance_id"].isin(ids)].head(int(k))
    position = {i: p for p, i in enumerate(ids)}
    pick = [position[int(i)] for i in part["instance_id"]]
    images = ui.cached_images(str(run.run_dir), tuple(int(i) for i in part["instance_id"]))
    if not images:
        st.info("This run has no image bank.")
        return
    titles = [f"#{int(r.instance_id)} {r.anomaly_score:.3f}" for r in part.itertuples()]
    shown_masks = [masks[p] for p in pick] if masks is not None else None
    st.plotly_chart(anomaly_map_grid([ui.display_image(images[int(i)]) for i in part["instance_id"]],
                                     [maps[p] for p in pick], titles, masks=shown_masks,
                                     title=f"{names.get(kind, kind)}: {order} (top: image, bottom: anomaly map)"),
                    key="anom_maps")


def render(run: Run, split: str, epoch: int, frame: pd.DataFrame, names: list[str]) -> None:
    """The anomaly views of one epoch of one split (`frame`: that epoch's rows)."""
    kinds = kind_names(run)
    if split == "train":
        st.subheader(f"Normal training images at epoch {epoch}")
        st.caption("The student trains on normal images only; `student_loss` is its cosine KD loss "
                   "to the teacher (the anomaly map's mean on these images).")
        columns = [c for c in ("student_loss", "memory_entropy") if c in frame and frame[c].notna().any()]
        for col, column in zip(st.columns(len(columns) or 1), columns):
            col.plotly_chart(weight_histogram(frame, column=column, title=f"{column} (n={len(frame)})"),
                             key=f"anom_train_{column}")
    else:
        st.subheader(f"Anomaly scores on {split}")
        metrics_section(run, split)
        if "anomaly_score" not in frame or frame["anomaly_score"].isna().all():
            st.info("No anomaly scores on this split.")
            return
        scored = frame.dropna(subset=["anomaly_score"]).astype({"kind": int})
        st.plotly_chart(score_histogram(scored, names=kinds, title=f"image score (map maximum) by kind, {split}"),
                        key="anom_scores")
        means = scored.groupby("kind")["anomaly_score"].agg(["count", "mean", "std"]).reset_index()
        means.insert(1, "kind name", [kinds.get(int(k), str(k)) for k in means["kind"]])
        st.dataframe(means, hide_index=True, key="anom_score_table")
        st.subheader("Anomaly maps")
        maps_section(run, split, scored, kinds)
    st.subheader("All instances of this epoch")
    ordered = [c for c in FIRST_COLUMNS if c in frame] + [c for c in frame if c not in FIRST_COLUMNS]
    sort = "anomaly_score" if "anomaly_score" in frame and frame["anomaly_score"].notna().any() else "student_loss"
    data = frame[ordered].sort_values(sort, ascending=False, na_position="last") if sort in frame else frame[ordered]
    st.caption(f"{len(data)} instances" + (f" (showing the first {TABLE_ROWS})" if len(data) > TABLE_ROWS else ""))
    st.dataframe(data.head(TABLE_ROWS), hide_index=True, key="anom_table")
    ui.export_buttons(data, f"{run.run_id}_instances_e{epoch}", key="anom_export")
