"""Features: how far the student's features are from the teacher's, layer by layer and epoch by
epoch, and the feature maps themselves for one recorded instance."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from kd_engine.inspection import agreement, normalise_map, resize_map
from kd_engine.store import Run
from workbench import components as ui
from workbench.pages import features_layers
from workbench.figures import disparity_curves, disparity_heatmap, map_panels
from workbench.pages import bev_views, dense_views, harmonization_views, incremental_views, points_views


def channel_map(array: np.ndarray) -> np.ndarray:
    """One (H, W) map per feature tensor: the mean activation magnitude over channels."""
    return np.abs(np.asarray(array, dtype=np.float32)).mean(axis=0)


def disparity_section(features: pd.DataFrame) -> None:
    metrics = list(dict.fromkeys(features["metric"]))
    metric = st.radio("Metric", metrics, horizontal=True, key="feat_metric",
                      index=metrics.index("disparity") if "disparity" in metrics else 0,
                      help="disparity = 1 − linear CKA; attention_mse compares spatial attention maps")
    left, right = st.columns(2)
    left.plotly_chart(disparity_heatmap(features, metric), key="feat_heatmap")
    right.plotly_chart(disparity_curves(features, metric), key="feat_curves")


def maps_section(run: Run, features: pd.DataFrame) -> None:
    st.subheader("Feature maps of one instance")
    index = ui.artifact_index(run, "feature_map")
    if index.empty:
        st.info("No feature maps were stored (they are saved for spatial layers of the recorded "
                "feature pairs, for `record.attention_maps` probe instances).")
        return
    pairs = features[["student_layer", "teacher_layer"]].drop_duplicates()
    have = {(r, lay) for r, lay in zip(index["role"], index["layer"])}
    pairs = [(s, t) for s, t in zip(pairs["student_layer"], pairs["teacher_layer"])
             if ("student", s) in have and ("teacher", t) in have]
    if not pairs:
        st.info("No layer pair has stored feature maps for both teacher and student.")
        return
    cols = st.columns(3)
    s_layer, t_layer = cols[0].selectbox("Layer pair (student ← teacher)", pairs, key="feat_pair",
                                         format_func=lambda p: p[0] if p[0] == p[1] else f"{p[0]} ← {p[1]}")
    epochs = sorted(int(e) for e in index["epoch"].dropna().unique())
    epoch = cols[1].select_slider("Epoch", epochs, value=epochs[-1], key="feat_epoch") if len(epochs) > 1 else epochs[0]

    def pick(role: str, layer: str):
        rows = index[(index["role"] == role) & (index["layer"] == layer) & (index["epoch"] == epoch)]
        return rows.iloc[0] if len(rows) else None

    s_row, t_row = pick("student", s_layer), pick("teacher", t_layer)
    if s_row is None or t_row is None:
        st.info(f"No feature maps for this pair at epoch {epoch}.")
        return
    ids = list(s_row["ids"])
    iid = cols[2].selectbox("Instance", ids, key="feat_instance")
    s_map = channel_map(ui.cached_artifact(str(run.run_dir), s_row["name"])[ids.index(iid)])
    t_ids = list(t_row["ids"])
    t_map = channel_map(ui.cached_artifact(str(run.run_dir), t_row["name"])[t_ids.index(iid)])
    t_norm = normalise_map(t_map)
    s_norm = normalise_map(resize_map(s_map, t_map.shape))
    panels = {}
    image = ui.cached_images(str(run.run_dir), (int(iid),)).get(int(iid))
    if image is not None:
        panels["input"] = ui.display_image(image)
    panels.update({"teacher": t_norm, "student": s_norm, "difference": t_norm - s_norm})
    score = agreement(t_norm, s_norm)
    st.plotly_chart(map_panels(panels, title=f"instance {iid}, epoch {epoch}: mean |activation| over "
                                             f"channels (min-max normalised)"), key="feat_maps")
    a, b, c = st.columns(3)
    a.metric("Pearson (teacher, student)", f"{score['pearson']:.3f}")
    b.metric("Cosine", f"{score['cosine']:.3f}")
    c.metric("Mean |difference|", f"{float(np.abs(t_norm - s_norm).mean()):.3f}")


# The Features view of each task with maps of its own (keyed by the run's `task` meta); a new task
# adds a row here.
TASK_VIEWS = {
    "dense": dense_views.features,  # per-pixel teacher-student disparity maps of probe images
    "open_vocab_seg": dense_views.features,  # the same maps (the teacher's is its crop-window reference)
    "bev": bev_views.features,  # per-cell disparity maps of probe scenes, CKA/disparity scalars
    "points": points_views.features,  # per-point teacher-student disagreement (3-D), confusion matrices
    "incremental": incremental_views.features,  # teacher and student class distance matrices
    "harmonization": harmonization_views.features,  # relation loss per epoch, relation matrices
}


def main() -> None:
    st.title("Features")
    run = ui.open_selected(ui.load_runs())
    if run is None:
        return
    ui.run_banner(run)
    view = TASK_VIEWS.get(run.meta().get("task"))
    if view is not None:  # shown above the teacher-student feature comparisons, which follow as for any run
        view(run)
    features = run.features()
    if features.empty:
        st.info("This run recorded no teacher–student feature comparisons: add "
                "`record.features` pairs or a feature distillation term (e.g. fitnet) to the config.")
        return
    disparity_section(features)
    features_layers.render(run)
    maps_section(run, features)


if __name__ == "__main__":
    ui.guard(main)
