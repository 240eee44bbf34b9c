"""Helpers for the run-integrity tests: one tiny real run trained per session (copied per test),
a process that holds a run's writer lock, and raw edits of a store's metadata."""
from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import PYTHON, REPO, subprocess_env
from raw_store import raw_instances

# No teacher, one thread, one epoch: a few seconds.
TINY: dict[str, Any] = {
    "name": "tiny", "method": "scratch", "seed": 0, "device": "cpu", "epochs": 1, "threads": 1,
    "data": {"name": "digits", "batch_size": 128},
    "student": {"name": "resnet", "params": {"width": 8, "depth": 1}},
    "optimizer": {"name": "sgd", "lr": 0.05},
    "record": {"tensorboard": False},
}


def tiny_raw(runs_dir: Path, **overrides: Any) -> dict[str, Any]:
    raw = json.loads(json.dumps(TINY))
    raw["runs_dir"] = str(runs_dir)
    raw.update(overrides)
    return raw


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished one-epoch run (do not modify: copy it with `copy_run`)."""
    from kd_engine.config import validate
    from kd_engine.run import train

    base = tmp_path_factory.mktemp("integrity_runs")
    return Path(train(validate(tiny_raw(base)), run_id="tiny", distributed=False))


def copy_run(source: Path, runs_dir: Path, run_id: str, epochs: int | None = None) -> Path:
    """A copy of a run under another id; `epochs` raises its config's epochs so it can resume."""
    target = Path(runs_dir) / run_id
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("writer.lock"))
    if epochs is not None:
        config = yaml.safe_load((target / "config.yaml").read_text())
        config["epochs"] = epochs
        (target / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def set_raw_meta(run_dir: Path, **values: str) -> None:
    """Write meta values as raw text (they are JSON in a healthy store)."""
    conn = sqlite3.connect(run_dir / "store.sqlite", isolation_level=None)
    try:
        conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", list(values.items()))
    finally:
        conn.close()


def train_rows(run_dir: Path) -> dict[int, int]:
    """Training rows per epoch, counted in the file itself (`tests/raw_store.py`)."""
    epochs = raw_instances(run_dir, ["epoch"], "train").epoch
    return {int(e): int(n) for e, n in epochs.value_counts().sort_index().items()}


class Holder:
    """Another process that opens the run with `RunWriter` (as a trainer does) and waits."""

    def __init__(self, run_dir: Path, status: str | None = None):
        code = ("import sys, time\n"
                "from kd_engine.store import RunWriter\n"
                "w = RunWriter(sys.argv[1], tensorboard=False)\n"
                "if sys.argv[2]: w.set_status(sys.argv[2])\n"
                "print('ready', flush=True)\n"
                "time.sleep(120)\n")
        self.process = subprocess.Popen([PYTHON, "-c", code, str(run_dir), status or ""], cwd=REPO,
                                        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        line = self.process.stdout.readline()
        assert line.strip() == "ready", self.process.stderr.read()

    def alive(self) -> bool:
        return self.process.poll() is None

    def end(self) -> None:
        if self.alive():
            self.process.kill()
        self.process.communicate(timeout=30)
