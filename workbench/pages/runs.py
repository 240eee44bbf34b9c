"""Runs: every run with its status and final metrics; launch, stop and resume runs."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from kd_engine.errors import KDWError
from kd_engine.store import open_run
from workbench import components as ui
from workbench import health
from workbench import launcher
from workbench.pages import launch_form

METRIC_ORDER = ("test/student_acc", "test/teacher_acc", "val/student_acc", "val/teacher_acc",
                "test/student_loss", "test/teacher_loss")


def runs_table() -> pd.DataFrame:
    """Recorded runs plus launches that have no store yet; unreadable stores get a clear status."""
    frame = ui.load_runs()
    locked = frame["status"].eq("corrupt") & frame["error"].fillna("").str.contains("locked")
    frame.loc[locked, "status"] = "locked"
    pending = pd.DataFrame([{"run_id": p["run_id"], "status": p["status"], "error": p["error"],
                             "created": p["started"], "name": "(launching)"}
                            for p in launcher.pending(ui.runs_dir())])
    if not pending.empty:
        frame = pd.concat([pending, frame], ignore_index=True)
    return frame


def filtered(frame: pd.DataFrame) -> pd.DataFrame:
    cols = st.columns([2, 2, 2, 2, 1])
    text = cols[0].text_input("Search run id / name", key="runs_search")
    statuses = cols[1].multiselect("Status", sorted(frame["status"].dropna().unique()), key="runs_status")
    methods = cols[2].multiselect("Method", sorted(frame["method"].dropna().unique()), key="runs_method")
    metric_cols = [c for c in METRIC_ORDER if c in frame]
    sortable = ["created", "run_id", "status", "method", "dataset", *metric_cols]
    sort_by = cols[3].selectbox("Sort by", sortable, key="runs_sort")
    descending = cols[4].toggle("Desc.", value=True, key="runs_desc")
    if text:
        hay = frame["run_id"].astype(str) + " " + frame["name"].fillna("").astype(str)
        frame = frame[hay.str.contains(text, case=False, regex=False)]
    if statuses:
        frame = frame[frame["status"].isin(statuses)]
    if methods:
        frame = frame[frame["method"].isin(methods)]
    return frame.sort_values(sort_by, ascending=not descending, na_position="last")


def show_table(frame: pd.DataFrame) -> None:
    metric_cols = [c for c in METRIC_ORDER if c in frame]
    shown = frame.assign(status=[f"{ui.STATUS_ICON.get(s, '•')} {s}" for s in frame["status"]],
                         created=pd.to_datetime(frame["created"].astype(float), unit="s", errors="coerce"))
    columns = ["status", "run_id", "method", "dataset", *metric_cols, "teacher", "student", "created", "error"]
    config = {c: st.column_config.NumberColumn(c, format="%.4f") for c in metric_cols}
    config["created"] = st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm:ss")
    st.dataframe(shown[columns], hide_index=True, column_config=config, key="runs_table")


def run_list(live: bool) -> None:
    """The table, refreshed every few seconds while something trains (a fragment: the launch
    form below keeps its edits)."""
    frame = runs_table()
    if frame.empty:
        ui.empty_message()
        return
    counts = frame["status"].value_counts()
    st.caption(" · ".join(f"{ui.STATUS_ICON.get(s, '•')} {n} {s}" for s, n in counts.items()))
    show_table(filtered(frame))
    for _, row in frame[frame["status"].isin(["corrupt", "locked"])].head(5).iterrows():
        (st.warning if row["status"] == "locked" else st.error)(f"{row['run_id']}: {row['error']}")
    now_live = bool(frame["status"].isin(ui.LIVE_STATUSES).any())
    if now_live != live:
        st.rerun()


def actions(frame: pd.DataFrame) -> None:
    """Stop, resume and the log of one run."""
    options = frame["run_id"].tolist()
    if not options:
        return
    st.subheader("Run details")
    current = st.session_state.get(ui.RUN_KEY)
    current = current if current in options else ui.default_run(frame) or options[0]
    run_id = st.selectbox("Run", options, index=options.index(current) if current in options else 0,
                          format_func=ui.run_label(frame), key="runs_detail_pick")
    st.session_state[ui.RUN_KEY] = run_id
    row = frame[frame["run_id"] == run_id].iloc[0]
    status = row["status"]
    if status in ("corrupt", "locked"):
        (st.warning if status == "locked" else st.error)(f"Cannot read this run: {row['error']}")
        return
    if status == "starting":
        st.info("Starting: building the data and the teacher before the run's store exists.")
    elif status == "failed" and row.get("name") == "(launching)":
        st.error(f"The launch failed before the run started: {row['error']}")
    else:
        run = open_run(run_id, ui.runs_dir())
        ui.run_banner(run)
        metrics = run.final_metrics()
        if metrics:
            shown = {k: v for k, v in metrics.items() if k.endswith("acc")}
            for col, (key, value) in zip(st.columns(max(1, len(shown))), shown.items()):
                col.metric(key, f"{value:.4f}")
    left, right, _ = st.columns([1, 1, 4])
    can_resume = status in ("stopped", "failed", "stale") and row.get("name") != "(launching)" and \
        (ui.runs_dir() / run_id / "checkpoints" / "state.pt").is_file()
    if left.button("Stop", icon=":material/stop:", disabled=status not in ui.LIVE_STATUSES, key="stop_btn"):
        try:
            st.success(launcher.stop(run_id, ui.runs_dir()))
        except KDWError as exc:
            st.error(launcher.cli_error(exc))
    if right.button("Resume", icon=":material/play_arrow:", disabled=not can_resume, key="resume_btn",
                    help="continue from the last epoch checkpoint"):
        try:
            record = launcher.resume(run_id, ui.runs_dir())
            st.success(f"Resuming {run_id} (pid {record['pid']})")
        except KDWError as exc:
            st.error(launcher.cli_error(exc))
    log = launcher.log_tail(run_id, ui.runs_dir(), 40)
    if log:
        with st.expander("Process log (last 40 lines)"):
            st.code(log, language="text")


def main() -> None:
    st.title("Runs")
    base = ui.runs_dir()
    frame = runs_table()
    live = bool(frame["status"].isin(ui.LIVE_STATUSES).any()) if not frame.empty else False
    health.selected_panel(frame, st.session_state.get("runs_detail_pick"))
    st.fragment(run_every=3 if live else None)(run_list)(live)
    if not frame.empty:
        actions(frame)
    st.subheader("Launch a run")
    with st.container(border=True):
        launch_form.render(base)


if __name__ == "__main__":
    ui.guard(main)
