"""Curves: live training curves of one or several runs.

While a chosen run trains, a fragment reruns every few seconds and reads only the scalar rows
after the last rowid it has seen (kept in session state), so a refresh costs one small query.
"""
from __future__ import annotations

import fnmatch

import pandas as pd
import streamlit as st

from kd_engine.store import StoreError, open_run
from workbench import components as ui
from workbench import health
from workbench.figures import scalar_curves

CACHE_KEY = "kdw_scalar_cache"
DEFAULT_KEYS = ("train/task", "train/student_loss", "train/teacher_loss", "train/distill",
                "train/term/*", "train/weight_mean", "val/*_acc", "val/*_map", "val/*_ap50", "lr")
REFRESH_S = 2.0


def read_new(run_id: str) -> tuple[pd.DataFrame, int, str]:
    """The run's scalars so far: cached rows plus the rows after the last seen rowid.
    A resumed run (its `updated` stamp changes) is read again from the start."""
    run = open_run(run_id, ui.runs_dir())
    meta = run.meta()
    cache = st.session_state.setdefault(CACHE_KEY, {})
    entry = cache.get(run_id)
    stamp = f"{meta.get('created')}:{meta.get('updated')}"
    if entry is None or entry["stamp"] != stamp:
        entry = {"stamp": stamp, "rowid": 0, "frame": pd.DataFrame()}
    new = run.scalars(since_rowid=entry["rowid"])
    if not new.empty:
        entry["frame"] = pd.concat([entry["frame"], new], ignore_index=True) if len(entry["frame"]) else new
        entry["rowid"] = int(new["rowid"].iloc[-1])
    cache[run_id] = entry
    return entry["frame"], len(new), run.status()


def default_keys(keys: list[str]) -> list[str]:
    """Keys matching DEFAULT_KEYS, ignoring case (detection logs val/student_mAP)."""
    return [k for k in keys if any(fnmatch.fnmatchcase(k.lower(), pattern) for pattern in DEFAULT_KEYS)]


def live_curves(run_ids: list[str], keys: list[str], smoothing: float, log_y: bool, x: str,
                live: bool) -> None:
    frames, notes, running = [], [], False
    for run_id in run_ids:
        try:
            frame, new_rows, status = read_new(run_id)
        except StoreError as exc:
            st.warning(f"{run_id}: {exc}")
            continue
        running |= status in ui.LIVE_STATUSES
        last = int(frame["step"].max()) if len(frame) else 0
        notes.append(f"{ui.STATUS_ICON.get(status, '•')} {run_id}: {len(frame)} points, step {last} "
                     f"(+{new_rows} new)")
        frames.append(frame.assign(run=run_id))
    st.caption(" · ".join(notes), help="points read so far; a refresh reads only the new rows")
    data = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if data.empty:
        st.info("No scalars recorded yet: the first ones arrive after the first training steps.")
    else:
        if x == "wall":
            data = data.assign(wall=pd.to_datetime(data["wall"], unit="s"))
        by_key = dict(tuple(data.groupby("key", sort=False)))  # split once, not once per chart
        present = sorted(by_key)
        shown = [k for k in keys if k in present] or default_keys(present)  # keys may appear late
        columns = st.columns(2)
        for n, key in enumerate(shown):
            with columns[n % 2]:
                st.plotly_chart(scalar_curves(by_key[key], key, smoothing=smoothing, log_y=log_y, x=x),
                                key=f"curve_{key}")
        st.download_button("Export CSV", lambda: data.drop(columns=["rowid"]).to_csv(index=False),
                           file_name="curves.csv", mime="text/csv", on_click="ignore", key="curves_csv")
    if live and not running:
        st.rerun()  # the last run finished: a full rerun stops the polling


def main() -> None:
    st.title("Curves")
    runs = ui.load_runs()
    if runs.empty:
        ui.empty_message()
        return
    usable = runs[runs["status"] != "corrupt"]
    if usable.empty:
        st.error("Every run under this directory is unreadable; see the Runs page.")
        return
    options = usable["run_id"].tolist()
    preferred = [r for r in (st.session_state.get("kdw_launched"), st.session_state.get(ui.RUN_KEY),
                             ui.default_run(usable)) if r in options]
    if st.session_state.get("kdw_launched") in options:
        st.session_state.pop("kdw_launched")  # a fresh launch is shown once by default
    chosen = st.multiselect("Runs (overlay several to compare)", options,
                            default=preferred[:1] or options[:1], format_func=ui.run_label(runs),
                            key="curves_runs")
    if not chosen:
        st.info("Pick one or more runs.")
        return
    st.session_state[ui.RUN_KEY] = chosen[0]
    health.selected_panel(usable, chosen[0])
    keys: list[str] = []
    for run_id in chosen:
        try:
            keys += [k for k in open_run(run_id, ui.runs_dir()).scalar_keys() if k not in keys]
        except StoreError as exc:
            st.warning(f"{run_id}: {exc}")
    left, mid, right = st.columns([3, 1, 1])
    smoothing = left.slider("Smoothing (TensorBoard-style EMA)", 0.0, 0.99, 0.6, 0.01, key="curves_smooth")
    log_y = mid.toggle("Log scale", key="curves_log")
    x = right.radio("x axis", ["step", "epoch", "wall"], horizontal=True, key="curves_x")
    selected = st.multiselect("Scalars", sorted(keys), default=default_keys(sorted(keys)) or sorted(keys)[:4],
                              key="curves_keys")
    live = bool(runs[runs["run_id"].isin(chosen)]["status"].isin(ui.LIVE_STATUSES).any())
    if live:
        st.caption(f"● live: refreshing every {REFRESH_S:g} s")
    st.fragment(run_every=REFRESH_S if live else None)(live_curves)(chosen, selected, smoothing, log_y, x, live)


if __name__ == "__main__":
    ui.guard(main)
