"""Features page, diagnosis part: the layers ranked by how well their per-instance teacher-student
disparity predicts which instances the student gets wrong."""
from __future__ import annotations

import streamlit as st

from kd_engine.diagnosis import layer_prediction, layer_ranking
from kd_engine.diagnosis.figures import layer_auroc_bars, layer_score_curves
from kd_engine.store import Run
from workbench import components as ui


@st.cache_data(show_spinner=False, max_entries=16)
def cached_scores(run_dir: str, token: str):
    return layer_prediction(Run(run_dir))


def render(run: Run) -> None:
    st.subheader("Layers that predict trouble")
    scores = cached_scores(str(run.run_dir), ui.data_token(run))
    if scores.empty:
        st.info("No per-instance disparity recorded for this run (runs recorded before it was stored, "
                "or with no teacher).")
        return
    epochs = sorted(scores["epoch"].unique().tolist())
    epoch = st.select_slider("Epoch", epochs, value=epochs[-1], key="layers_epoch") if len(epochs) > 1 else epochs[0]
    ranking = layer_ranking(run, epoch, scores=scores)
    st.caption("For each layer, the probe instances' teacher–student disparity is used as a score for "
               "\"the student gets this instance wrong\" (AUROC; 0.5 = no better than chance) and set "
               "against the student's loss (Spearman ρ).")
    left, right = st.columns(2)
    left.plotly_chart(layer_auroc_bars(ranking), key="layers_bars")
    metric = right.radio("Score per epoch", ["auroc", "spearman"], horizontal=True, key="layers_metric")
    right.plotly_chart(layer_score_curves(scores, metric), key="layers_curves")
    st.dataframe(ranking, hide_index=True, key="layers_table")
