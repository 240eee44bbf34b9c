"""Shared fixtures for the engine's acceptance tests.

Every run goes to a temporary runs_dir; the teacher that most tests distil from is trained once
per session into a temporary cache_dir, so tests reuse it instead of retraining it.
"""
from __future__ import annotations

import copy
import gc
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BIN = Path(sys.executable).parent

# Small and fast: ~1 s per epoch on one CPU thread, with a teacher that trains in a few seconds.
BASE_CONFIG: dict[str, Any] = {
    "name": "digits_test",
    "seed": 0,
    "device": "cpu",
    "epochs": 2,
    "threads": 1,
    "data": {"name": "digits", "batch_size": 64},
    "teacher": {"name": "resnet", "params": {"width": 16, "depth": 1},
                "train": {"epochs": 2, "optimizer": {"lr": 0.05}}},
    "student": {"name": "resnet", "params": {"width": 8, "depth": 1}},
    "distill": {"task_weight": 1.0, "terms": [{"loss": "kd", "weight": 1.0, "params": {"temperature": 4.0}}]},
    "weighting": {"strategy": "uniform"},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0005},
    "schedule": {"name": "cosine"},
}


def pytest_collection_finish(session) -> None:
    """Freeze what collection imported (torch, pandas, streamlit, every test module): the garbage
    collector then stops scanning those objects again in each full collection, which took
    ~15 % of the CPU time of training tests."""
    gc.collect()
    gc.freeze()


def set_key(raw: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.0.c`` in a raw config dict (creating mappings on the way)."""
    node: Any = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def digits_raw(runs_dir: str | Path, cache_dir: str | Path,
               overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The small digits distillation config as a raw dict, with dotted-key overrides."""
    raw = copy.deepcopy(BASE_CONFIG)
    raw["runs_dir"], raw["cache_dir"] = str(runs_dir), str(cache_dir)
    for key, value in (overrides or {}).items():
        set_key(raw, key, value)
    return raw


def write_config(path: Path, raw: Any) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def kdw(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m kd_engine.cli ARGS`` (what the ``kdw`` script runs) and capture output."""
    return subprocess.run([PYTHON, "-m", "kd_engine.cli", *map(str, args)], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def run_dirs(runs_dir: Path, prefix: str = "") -> list[Path]:
    return sorted(p for p in Path(runs_dir).glob(f"{prefix}*") if (p / "store.sqlite").is_file())


def stop_after_epoch(monkeypatch, loop_class: type, method: str, epoch: int):
    """Make `loop_class.method(self, e)` raise StopRequested right after it has run for epoch
    `epoch` (as the dashboard's Stop would, with that epoch's checkpoint on disk); call the
    returned function to put the method back before resuming."""
    from kd_engine.trainer import StopRequested

    original = getattr(loop_class, method)

    def stopping(self, e, *args, **kwargs):
        original(self, e, *args, **kwargs)
        if e == epoch:
            raise StopRequested(f"stopped by the test after epoch {epoch}")

    monkeypatch.setattr(loop_class, method, stopping)
    return lambda: monkeypatch.setattr(loop_class, method, original)


@pytest.fixture(scope="session")
def teacher_cache(tmp_path_factory) -> SimpleNamespace:
    """Train the base config's teacher once; tests point cache_dir here to reuse it."""
    from kd_engine.cache import teacher_cache_path
    from kd_engine.run import build_teacher
    from kd_engine.config import validate

    root = tmp_path_factory.mktemp("teacher_cache")
    cfg = validate(digits_raw(root / "runs", root / "cache"))
    build_teacher(cfg, (1, 8, 8), 10)
    path = teacher_cache_path(cfg)
    assert path.is_file()
    return SimpleNamespace(cache_dir=root / "cache", path=path, runs_dir=root / "runs")


@pytest.fixture
def make_raw(tmp_path, teacher_cache):
    """Factory: the base config with runs in this test's tmp dir and the session's teacher cache."""

    def factory(overrides: dict[str, Any] | None = None, runs_dir: Path | None = None) -> dict[str, Any]:
        return digits_raw(runs_dir or tmp_path / "runs", teacher_cache.cache_dir, overrides)

    return factory


PARAMETERS_CELL = '# %% tags=["parameters"]'


@pytest.fixture
def smoke_results(tmp_path, monkeypatch):
    """Factory: run a notebook at the smoke budget into this test's tmp dir and return its results
    JSON, after checking the header every smoke test checks (the notebook, the budget, seed 0).

    The notebook's source (`notebooks/src/<name>.py`, which `test_notebooks` keeps equal to the
    .ipynb) runs in this process with the parameters papermill would inject after its
    parameters cell: a Jupyter kernel per notebook cost more CPU time (its start and its imports of
    torch, pandas and plotly) than most smoke runs themselves. `kdw reproduce`'s papermill path
    keeps its own tests in test_notebooks.py. Figures are serialised as a kernel would send them,
    not displayed."""

    def run(notebook: str) -> dict[str, Any]:
        source = REPO / "notebooks" / "src" / f"{notebook}.py"
        text = source.read_text()
        head, params = text.split(PARAMETERS_CELL, 1)
        end = params.find("\n# %%")
        results, work = tmp_path / f"{notebook}.results.json", tmp_path / "work" / notebook
        work.mkdir(parents=True)
        injected = f"budget = 'smoke'; results_path = {str(results)!r}; work_dir = {str(work)!r}\n"
        code = head + PARAMETERS_CELL + params[:end] + "\n" + injected + params[end + 1:]
        monkeypatch.chdir(REPO)  # where kdw reproduce runs notebooks
        monkeypatch.setattr("plotly.basedatatypes.BaseFigure.show", lambda fig, *a, **k: fig.to_json())
        script = tmp_path / f"{notebook}.py"
        script.write_text(code)
        runpy.run_path(str(script), run_name="__main__")
        payload = json.loads(results.read_text())
        assert payload["notebook"] == notebook and payload["budget"] == "smoke" and payload["seeds"] == [0]
        return payload

    return run
