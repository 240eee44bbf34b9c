"""Searches: every search under the runs directory (Auto-KD's MCTS and random search, BOSS and
plain TPE), the best reward so far against evaluations (one line per search), one search's
trials (each a run of the store) and, for MCTS, the visit counts per tree level."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from kd_engine.search.read import list_searches, open_search, tree_visits
from workbench import components as ui
from workbench.figures import level_visits, search_curves


def main() -> None:
    st.title("Searches")
    searches = list_searches(ui.runs_dir())
    if searches.empty:
        st.info(f"No searches under `{ui.runs_dir()}` yet. Run one with `kdw train configs/autokd_digits.yaml` "
                "or `kdw search configs/boss_digits.yaml`.")
        return
    st.dataframe(searches.drop(columns=["created"]), hide_index=True, key="search_list")
    ids = searches["search_id"].tolist()
    chosen = st.multiselect("Compare searches", ids, default=ids[:6], key="search_compare")
    if chosen:
        frames = [open_search(sid, ui.runs_dir()).trials().assign(search_id=sid) for sid in chosen]
        frame = pd.concat([f for f in frames if not f.empty] or [pd.DataFrame(columns=["search_id", "trial", "reward"])],
                          ignore_index=True)
        if frame.empty:
            st.info("The chosen searches have no finished evaluation yet.")
        else:
            st.plotly_chart(search_curves(frame, title="best reward so far against evaluations "
                                          "(the reward is a validation quantity)"), key="search_curves")
    sid = st.selectbox("Search", ids, key="search_one")
    search = open_search(sid, ui.runs_dir())
    trials = search.trials()
    best = search.best()
    cols = st.columns(4)
    cols[0].metric("strategy", search.strategy)
    cols[1].metric("evaluations", f"{len(trials)} / {search.budget}")
    if best is not None:
        cols[2].metric("best reward (val)", f"{best['reward']:.4f}", help=f"trial {int(best['trial'])}")
        test = best.get("test_acc")
        cols[3].metric("its test accuracy", "-" if test is None or pd.isna(test) else f"{test:.4f}",
                       help="reported after the search; never used to select")
    st.subheader("Trials")
    st.caption("Each trial is a run: open it by its run id on the other pages.")
    st.dataframe(trials, hide_index=True, key="search_trials")
    ui.export_buttons(trials, f"search-{sid}", key="search_export")
    visits = tree_visits(search)
    if not visits.empty:
        st.plotly_chart(level_visits(visits, title=f"MCTS visits per tree level: {sid}"), key="search_visits")


if __name__ == "__main__":
    ui.guard(main)
