"""Widgets and cached readers shared by the dashboard's pages.

Every read goes through `kd_engine.store`; every page body runs inside `guard`, so a broken or
locked run database becomes a one-line message instead of a traceback.
"""
from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import streamlit as st

from kd_engine.errors import KDWError
from kd_engine.store import Run, StoreError, list_runs, open_run
from workbench import launcher

STATUS_ICON = {"running": "●", "finished": "✓", "failed": "✗", "stale": "⚠", "stopped": "■",
               "corrupt": "✗", "locked": "⊘", "starting": "…", "not responding": "◌"}
RUN_KEY = "kdw_run"
# A run in any of these states may still write rows; "not responding" is a live trainer (it holds
# the run's writer lock) whose heartbeat is late, e.g. a paused process.
LIVE_STATUSES = ("running", "starting", "not responding")


def runs_dir() -> Path:
    return launcher.runs_dir()


def guard(page: Callable[[], None]) -> None:
    """Run a page; store and user errors become st.error lines, never a traceback."""
    try:
        page()
    except StoreError as exc:
        st.error(f"Cannot read this run: {exc}")
    except KDWError as exc:
        st.error(launcher.cli_error(exc))
    except Exception as exc:  # noqa: BLE001 - the dashboard must not show a traceback
        st.error(f"Unexpected error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def load_runs() -> pd.DataFrame:
    """All runs (newest first); a missing runs directory is an empty list."""
    base = runs_dir()
    if not base.is_dir():
        return list_runs(base / "__missing__")
    return list_runs(base)


def empty_message() -> None:
    st.info(f"No runs under `{runs_dir()}` yet. Launch one from the **Runs** page, or run "
            "`make demo` (or `kdw demo`) to record the demo runs.")


def run_label(runs: pd.DataFrame) -> Callable[[str], str]:
    status = dict(zip(runs["run_id"], runs["status"]))
    return lambda rid: f"{STATUS_ICON.get(status.get(rid), '•')} {rid}"


def default_run(runs: pd.DataFrame) -> str | None:
    """The newest run that has something to show: running or finished first."""
    good = runs[runs["status"].isin(["running", "finished"])]["run_id"].tolist()
    rest = runs[runs["status"] != "corrupt"]["run_id"].tolist()
    return (good or rest or [None])[0]


def pick_run(runs: pd.DataFrame, label: str = "Run", key: str = RUN_KEY,
             usable: bool = True, where: Any = None) -> str | None:
    """A run picker whose choice is shared by the pages (kept in session state, not the widget)."""
    where = where or st.sidebar
    frame = runs[runs["status"] != "corrupt"] if usable else runs
    options = frame["run_id"].tolist()
    if not options:
        return None
    current = st.session_state.get(key)
    if current not in options:
        current = default_run(frame)
    index = options.index(current)
    choice = where.selectbox(label, options, index=index, format_func=run_label(runs))
    st.session_state[key] = choice
    return choice


def open_selected(runs: pd.DataFrame) -> Run | None:
    """Sidebar picker + open; explains an empty or all-corrupt runs directory."""
    if runs.empty:
        empty_message()
        return None
    run_id = pick_run(runs)
    if run_id is None:
        st.error("Every run under this directory is unreadable; see the Runs page.")
        return None
    return open_run(run_id, runs_dir())


def run_banner(run: Run) -> str:
    """Status line plus the message a running, failed, stale or stopped run needs."""
    meta = run.meta()
    status = run.status()
    parts = [meta.get("method"), meta.get("dataset"), f"teacher {meta.get('teacher')}" if meta.get("teacher")
             else "no teacher", f"student {meta.get('student')}"]
    st.caption(f"{STATUS_ICON.get(status, '•')} **{run.run_id}** · {status} · "
               + " · ".join(str(p) for p in parts if p))
    if status == "running":
        st.info("This run is still training: the page shows what has been recorded so far.")
    elif status == "failed":
        st.error(f"This run failed: {meta.get('error') or 'no error recorded'}")
    elif status == "stale":
        st.warning("This run stopped sending heartbeats and no trainer holds it any more (killed, "
                   "or its machine is gone). Resume it from the Runs page.")
    elif status == "not responding":
        st.warning("This run's trainer is alive (it holds the run) but has not sent a heartbeat "
                   "recently (paused or overloaded), or its heartbeat lies in the future. It cannot be "
                   "resumed while it lives; stop it first if it is stuck.")
    elif status == "stopped":
        st.info("This run was stopped; resume it from the Runs page.")
    if meta.get("warning"):
        st.warning(f"Warning: {meta['warning']}")
    return status


def data_token(run: Run) -> str:
    """Changes whenever the run records more, so cached reads of a live run refresh."""
    meta = run.meta()
    return f"{meta.get('status')}:{meta.get('heartbeat')}:{meta.get('updated')}"


@st.cache_data(show_spinner=False, max_entries=64)
def cached_instances(run_dir: str, token: str, split: str | None, epoch: int | None,
                     columns: tuple[str, ...] | None = None,
                     ids: tuple[int, ...] | None = None) -> pd.DataFrame:
    frame = Run(run_dir).instances(split=split, epoch=epoch, columns=list(columns) if columns else None,
                                   instance_ids=list(ids) if ids is not None else None)
    for col in frame.columns:  # all-NULL columns (e.g. no teacher) come back as objects
        if col != "split" and frame[col].dtype == object:
            frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame


@st.cache_data(show_spinner=False, max_entries=128)
def cached_artifact(run_dir: str, name: str) -> np.ndarray:
    return Run(run_dir).load_artifact(name).astype(np.float32)


@st.cache_data(show_spinner=False, max_entries=32)
def cached_images(run_dir: str, ids: tuple[int, ...]) -> dict[int, np.ndarray]:
    return Run(run_dir).images(ids)


def artifact_index(run: Run, kind: str) -> pd.DataFrame:
    """Artifacts of a kind with role, layer, epoch and instance ids parsed from their meta."""
    frame = run.artifacts(kind)
    if frame.empty:
        return frame.assign(layer=[], ids=[])
    metas = [json.loads(m or "{}") for m in frame["meta"]]
    frame = frame.assign(layer=[m.get("layer") for m in metas],
                         ids=[tuple(int(i) for i in m.get("instance_ids", [])) for m in metas])
    frame["epoch"] = pd.to_numeric(frame["epoch"], errors="coerce").astype("Int64")
    return frame


def display_image(img: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) in [0, 1] from a stored image of any layout."""
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return np.clip(arr, 0.0, 1.0)


def class_name(names: Sequence[str], label: Any) -> str:
    try:
        return str(names[int(label)])
    except (TypeError, ValueError, IndexError):
        return str(label)


def export_buttons(frame: pd.DataFrame, stem: str, key: str) -> None:
    """CSV and Parquet downloads, serialised only when clicked."""
    def parquet() -> bytes:
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        return buf.getvalue()

    left, right = st.columns(2)
    left.download_button("Export CSV", lambda: frame.to_csv(index=False), file_name=f"{stem}.csv",
                         mime="text/csv", key=f"{key}_csv", on_click="ignore")
    right.download_button("Export Parquet", parquet, file_name=f"{stem}.parquet",
                          mime="application/octet-stream", key=f"{key}_parquet", on_click="ignore")


def ago(ts: Any) -> str:
    try:
        seconds = time.time() - float(ts)
    except (TypeError, ValueError):
        return ""
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(float(ts)))
