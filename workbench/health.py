"""The run-health panel at the top of the Runs and Curves pages: problems first, each with where
its evidence is; every check (passed, or without data yet) in an expander below. It refreshes
while the run trains."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from kd_engine.diagnosis import Check, run_health
from kd_engine.store import Run, StoreError, open_run
from workbench import components as ui

ICON = {"ok": ":green[✓]", "warn": ":orange[⚠]", "fail": ":red[✗]", "no data": ":gray[…]", "n/a": ":gray[–]"}
REFRESH_S = 3.0
PAGE_FILES = {"Curves": "workbench/pages/curves.py", "Instances": "workbench/pages/instances.py",
              "Features": "workbench/pages/features.py"}


@st.cache_data(show_spinner=False, max_entries=32)
def cached_health(run_dir: str, token: str) -> list[Check]:
    return run_health(Run(run_dir))


def _line(check: Check) -> str:
    evidence = check.evidence()
    return f"{ICON.get(check.status, '•')} **{check.name}**: {check.message}" + \
        (f"  \n:gray[evidence: {evidence}]" if evidence else "")


def panel(run_id: str) -> None:
    """The checks of one run, read from its store."""
    try:
        run = open_run(run_id, ui.runs_dir())
        checks = cached_health(str(run.run_dir), ui.data_token(run))
    except StoreError as exc:
        st.caption(f"Run health unavailable: {exc}")
        return
    problems = [c for c in checks if c.flagged]
    with st.container(border=True, key="health_panel"):
        st.markdown(f"**Run health** · `{run_id}` · " + (f":red[{len(problems)} problem(s)]" if problems
                                                         else ":green[no problem found]"))
        for check in problems:
            (st.error if check.status == "fail" else st.warning)(_line(check))
            if check.page in PAGE_FILES:  # the evidence, one click away (the run stays selected)
                st.page_link(PAGE_FILES[check.page], label=f"Open {check.page}" + (f": {check.key}" if check.key else ""),
                             icon=":material/arrow_forward:")
        with st.expander(f"All {len(checks)} checks", expanded=False):
            st.markdown("  \n".join(_line(c) for c in checks))


def selected_panel(runs: pd.DataFrame, prefer: str | None = None) -> None:
    """The panel of `prefer`, else the run the pages share, else the newest one worth showing;
    refreshed every few seconds while that run trains."""
    if runs.empty or "status" not in runs:
        return
    usable = runs[runs["status"].isin(["running", "finished", "failed", "stopped", "stale"])]
    if usable.empty:
        return
    options = usable["run_id"].tolist()
    run_id = next((r for r in (prefer, st.session_state.get(ui.RUN_KEY)) if r in options), None) \
        or ui.default_run(usable)
    live = bool(usable.loc[usable["run_id"] == run_id, "status"].isin(ui.LIVE_STATUSES).any())
    st.fragment(run_every=REFRESH_S if live else None)(panel)(run_id)
