"""`make bench` (second half): how fast the dashboard is on a large run store.

A synthetic distillation run is written with the trainer's own `RunWriter`: by default 20,000
training instances x 50 epochs = 1,000,000 per-instance records (the columns the trainer records:
instance_id, label, step, weight, teacher_/student_/distill_loss, term_kd, teacher_/student_pred
and _conf, split "train"), 157 steps per epoch of per-step scalars (8 keys, about 63,000 rows),
per-epoch validation scalars and a 28x28 image bank. Then:

* ``instances_first_render``  the Instances page opened in a fresh AppTest session with an empty
                              `st.cache_data`: wall time of the `at.run()` that renders it
                              (median over repeats). Goal: under 2 s.
* ``curves_live_refresh``     the Curves page's live fragment (`curves.live_curves`, the function
                              `st.fragment(run_every=...)` reruns) after it has read the store
                              once: the trainer appends new scalar rows with `RunWriter`, then one
                              fragment rerun is timed: `read_new` (`Run.scalars(since_rowid=...)`
                              and the merge into the cached frame) plus building and sending its
                              charts (median over refreshes). Goal: under 100 ms. Its parts
                              (read_new, scalar_curves, st.plotly_chart) are reported beside it.

    python -m workbench.bench           # full: 1M records (a minute or two, most of it building)
    python -m workbench.bench --quick   # smoke test: a small store, the numbers mean little
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from kd_engine.bench_harness import run_and_report, timed

REPO = Path(__file__).resolve().parent.parent
RUN_ID = "20260101-000000-bench_kd-0000"
FULL = {"instances": 20_000, "epochs": 50, "batch": 128, "repeats": 5, "refreshes": 20, "new_rows": 200}
QUICK = {"instances": 500, "epochs": 4, "batch": 100, "repeats": 2, "refreshes": 3, "new_rows": 40}
GOALS = {"instances_first_render": 2000.0, "curves_live_refresh": 100.0}  # milliseconds
STEP_KEYS = ("train/loss", "train/task", "train/distill", "train/term/kd", "train/student_loss",
             "train/teacher_loss", "train/weight_mean", "lr")
IMAGE_SIDE = 28


def _epoch_columns(rng: np.random.Generator, labels: np.ndarray, epoch: int, epochs: int,
                   steps: int) -> dict[str, np.ndarray]:
    """One epoch of training records, in the shuffled order the trainer writes them."""
    n = len(labels)
    ids = rng.permutation(n)
    y = labels[ids]
    progress = (epoch + 1) / epochs
    hard = rng.gamma(1.5, 0.4, n)  # instance difficulty, redrawn: only the distribution matters
    teacher_loss = hard * 0.3
    student_loss = hard * (1.2 - 0.8 * progress) + rng.gamma(2.0, 0.05, n)
    teacher_pred = np.where(rng.random(n) < 0.95, y, (y + 1) % 10)
    student_pred = np.where(rng.random(n) < 0.6 + 0.3 * progress, y, rng.integers(0, 10, n))
    step = epoch * steps + np.minimum(np.arange(n) // max(1, math.ceil(n / steps)), steps - 1)
    return {"split": np.full(n, "train"), "epoch": np.full(n, epoch), "step": step, "instance_id": ids,
            "label": y, "teacher_loss": teacher_loss, "student_loss": student_loss,
            "distill_loss": rng.gamma(2.0, 0.3, n), "weight": np.exp(-2.0 * teacher_loss),
            "term_kd": rng.gamma(2.0, 0.3, n), "teacher_pred": teacher_pred,
            "teacher_conf": rng.uniform(0.6, 1.0, n), "student_pred": student_pred,
            "student_conf": rng.uniform(0.3, 1.0, n)}


def build_store(runs_dir: Path, instances: int, epochs: int, batch: int, log=print) -> dict:
    """A finished distillation run with `instances * epochs` train records; returns its shape."""
    import yaml

    from kd_engine.store import RunWriter

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, instances)
    steps = math.ceil(instances / batch)
    config = {"name": "bench_kd", "seed": 0, "epochs": epochs, "device": "cpu",
              "data": {"name": "synthetic", "batch_size": batch},
              "teacher": {"name": "resnet", "params": {"width": 32, "depth": 1}},
              "student": {"name": "resnet", "params": {"width": 8, "depth": 1}},
              "distill": {"terms": [{"loss": "kd", "weight": 1.0, "params": {"temperature": 4.0}}]},
              "weighting": {"strategy": "aid"}}
    meta = {"method": "standard", "dataset": "synthetic", "student": "resnet(depth=1, width=8)",
            "teacher": "resnet(depth=1, width=32)", "weighting": "aid", "seed": 0, "epochs": epochs,
            "device": "cpu", "student_params": 20_000, "teacher_params": 300_000,
            "class_names": [str(k) for k in range(10)], "input_shape": [1, IMAGE_SIDE, IMAGE_SIDE]}
    started = time.perf_counter()
    writer = RunWriter.create(runs_dir, "bench_kd", meta, yaml.safe_dump(config), run_id=RUN_ID,
                              tensorboard=False)
    writer.save_images(np.arange(instances), rng.random((instances, 1, IMAGE_SIDE, IMAGE_SIDE), np.float32))
    step = 0
    for epoch in range(epochs):
        for _ in range(steps):
            decay = 1.0 / (1.0 + 0.01 * step)
            writer.log_scalars(step, epoch, {key: (0.5 + rng.random() * 0.1) * decay for key in STEP_KEYS})
            step += 1
        writer.log_scalars(step, epoch, {"val/student_acc": 0.6 + 0.3 * (epoch + 1) / epochs,
                                         "val/teacher_acc": 0.95, "epoch_time": 10.0, "throughput": 5000.0})
        writer.flush()
        writer.log_instances(_epoch_columns(rng, labels, epoch, epochs, steps))
    writer.set_meta(final_metrics={"val/student_acc": 0.9, "val/teacher_acc": 0.95})
    writer.set_status("finished")
    writer.close()
    seconds = time.perf_counter() - started
    records = instances * epochs
    log(f"store: {instances:,} train instances x {epochs} epochs = {records:,} per-instance records, "
        f"{step:,} steps x {len(STEP_KEYS)} scalar keys, {instances:,} images "
        f"({_size_mb(runs_dir / RUN_ID):.0f} MB, built in {seconds:.1f} s)")
    return {"instances": instances, "epochs": epochs, "records": records, "steps": step,
            "scalar_rows": step * len(STEP_KEYS) + 4 * epochs, "build_s": round(seconds, 1),
            "store_mb": round(_size_mb(runs_dir / RUN_ID), 1)}


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "samples": values}


# -- (a) the Instances page's first render ----------------------------------------------------
def instances_first_render(repeats: int, log=print) -> dict:
    """Milliseconds of a fresh session's `at.run()` of the Instances page, caches emptied."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    samples = []
    for n in range(repeats + 1):  # the first one is a warm-up (imports), not counted
        at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=600)
        at.session_state["kdw_run"] = RUN_ID
        at.run()  # AppTest opens the default page first; switch_page needs one run
        at.switch_page("workbench/pages/instances.py")
        st.cache_data.clear()
        started = time.perf_counter()
        at.run()
        ms = 1000.0 * (time.perf_counter() - started)
        if at.exception or at.error:
            raise RuntimeError(f"the Instances page failed: {[e.value for e in at.exception or at.error]}")
        if not at.get("plotly_chart"):
            raise RuntimeError("the Instances page drew no chart")
        if n:
            samples.append(ms)
        log(f"  instances first render {'(warm-up) ' if not n else ''}{ms:8.1f} ms")
    return _summary(samples)


# -- (b) the Curves page's live refresh -------------------------------------------------------
def _fragment_script() -> None:
    """Runs inside AppTest: one call of the Curves page's live fragment, timed."""
    import time as _time

    import streamlit as st

    from workbench.pages import curves

    args = st.session_state["bench_args"]
    started = _time.perf_counter()
    curves.live_curves(**args)
    st.session_state["bench_fragment_ms"] = 1000.0 * (_time.perf_counter() - started)


# Parts of one fragment rerun, timed by wrapping what `curves.live_curves` calls.
PARTS = {"read": "read_new: Run.scalars(since_rowid) + merge",
         "figures": "scalar_curves: build the Plotly figures",
         "charts": "st.plotly_chart: serialise and send them"}


def curves_live_refresh(runs_dir: Path, refreshes: int, new_rows: int, log=print) -> dict:
    """Milliseconds of one live-fragment rerun after `new_rows` scalar rows were appended."""
    import streamlit
    from streamlit.testing.v1 import AppTest

    from kd_engine.store import RunWriter, open_run
    from workbench.pages import curves

    run_dir = runs_dir / RUN_ID
    writer = RunWriter(run_dir, tensorboard=False)
    writer.set_status("running")  # this process is the trainer now: pid and heartbeat are fresh
    keys = open_run(run_dir).scalar_keys()
    args = {"run_ids": [RUN_ID], "keys": curves.default_keys(keys), "smoothing": 0.6, "log_y": False,
            "x": "step", "live": True}
    at = AppTest.from_function(_fragment_script, default_timeout=600)
    at.session_state["bench_args"] = args
    at.run()  # the page's first read: every scalar so far
    _check(at)
    first_ms = at.session_state["bench_fragment_ms"]
    last = int(open_run(run_dir).scalars(since_rowid=0)["step"].max())
    epoch = int(open_run(run_dir).meta().get("epochs", 1))
    steps = max(1, new_rows // len(STEP_KEYS))
    added = steps * len(STEP_KEYS)
    fragment, parts, points = [], {k: [] for k in PARTS}, 0
    totals: dict[str, float] = {}
    originals = (curves.read_new, curves.scalar_curves, streamlit.plotly_chart)
    # the fragment looks these names up at call time, so wrapping them times its parts
    curves.read_new = timed(originals[0], totals, "read")
    curves.scalar_curves = timed(originals[1], totals, "figures")
    streamlit.plotly_chart = timed(originals[2], totals, "charts")
    try:
        for _ in range(refreshes):
            for _ in range(steps):
                last += 1
                writer.log_scalars(last, epoch, {k: 0.1 for k in STEP_KEYS})
            writer.flush()
            writer.heartbeat()
            totals.clear()
            at.run()
            _check(at)
            caption = " ".join(str(c.value) for c in at.caption)
            if f"(+{added} new)" not in caption:
                raise RuntimeError(f"the refresh did not read exactly the new rows: {caption}")
            fragment.append(at.session_state["bench_fragment_ms"])
            for key in PARTS:
                parts[key].append(1000.0 * totals.get(key, 0.0))  # seconds -> ms
            points = int(caption.split(": ")[1].split(" points")[0])
    finally:
        curves.read_new, curves.scalar_curves, streamlit.plotly_chart = originals
        writer.set_status("finished")
        writer.close()
    log(f"  curves: first read {first_ms:.1f} ms; {refreshes} refreshes of {added} new rows, "
        f"{points:,} points in {len(args['keys'])} charts")
    return {"fragment": _summary(fragment), "parts": {k: _summary(v) for k, v in parts.items()},
            "first_read_ms": first_ms, "new_rows": added, "charts": len(args["keys"]), "points": points}


def _check(at) -> None:
    if at.exception or at.error or at.warning:
        raise RuntimeError(f"the Curves fragment failed: {[e.value for e in (at.exception or at.error or at.warning)]}")


def _quiet_bare_mode() -> None:
    """AppTest and `st.cache_data.clear()` outside `streamlit run` warn that they are; expected here."""
    import logging

    for name in ("streamlit.runtime.scriptrunner_utils.script_run_context",
                 "streamlit.runtime.caching.cache_data_api"):
        logging.getLogger(name).addFilter(lambda record: record.levelno > logging.WARNING)


def run(preset: dict, runs_dir: Path, log=print) -> dict:
    _quiet_bare_mode()
    os.environ["KDW_RUNS_DIR"] = str(runs_dir)
    store = build_store(runs_dir, preset["instances"], preset["epochs"], preset["batch"], log=log)
    render = instances_first_render(preset["repeats"], log=log)
    live = curves_live_refresh(runs_dir, preset["refreshes"], preset["new_rows"], log=log)
    measures = {
        "instances_first_render": {
            "label": f"Instances page first render ({store['records']:,} records)", "ms": render["median"],
            **render},
        "curves_live_refresh": {
            "label": f"Curves live refresh (+{live['new_rows']} rows, read+merge+plot)",
            "ms": live["fragment"]["median"], **live["fragment"]},
    }
    for key, label in PARTS.items():
        measures[f"curves_refresh_{key}"] = {"label": f"  of which {label}", "ms": live["parts"][key]["median"],
                                             **live["parts"][key]}
    for key, entry in measures.items():
        if key in GOALS:
            entry.update(goal_ms=GOALS[key], passed=entry["ms"] <= GOALS[key])
    return {"store": store, "curves": {k: live[k] for k in ("first_read_ms", "new_rows", "charts", "points")},
            "measures": measures,
            "settings": {"repeats": preset["repeats"], "refreshes": preset["refreshes"],
                         "python": platform.python_version(), "cpu_count": os.cpu_count(),
                         "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}}


def table(results: dict) -> str:
    lines = [f"{'measure':<62} {'median':>10} {'min-max':>19} {'goal':>9}  verdict"]
    for entry in results["measures"].values():
        goal = f"{entry['goal_ms']:>6.0f} ms" if "goal_ms" in entry else f"{'':>9}"
        verdict = ("PASS" if entry["passed"] else "over goal") if "goal_ms" in entry else "(info)"
        lines.append(f"{entry['label']:<62} {entry['ms']:>7.1f} ms {entry['min']:>8.1f}-{entry['max']:<7.1f}ms "
                     f"{goal}  {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.bench",
                                     description="Dashboard speed on a large run store: the Instances page's "
                                                 "first render and a live Curves refresh.")
    parser.add_argument("--quick", action="store_true", help="a small store (the numbers mean little)")
    parser.add_argument("--instances", type=int, help=f"training instances (default {FULL['instances']:,})")
    parser.add_argument("--epochs", type=int, help=f"epochs of records (default {FULL['epochs']})")
    parser.add_argument("--repeats", type=int, help=f"first renders timed (default {FULL['repeats']})")
    parser.add_argument("--out", default="artifacts/bench/dashboard.json", help="where the JSON results go")
    args = parser.parse_args(argv)
    preset = dict(QUICK if args.quick else FULL)
    for key in ("instances", "epochs", "repeats"):
        if getattr(args, key):
            preset[key] = getattr(args, key)
    run_and_report(lambda tmp: run(preset, tmp),
                   "kdw-dash-bench-", args.quick, table, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
