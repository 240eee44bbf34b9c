"""Fixture run stores for the dashboard tests, written with the trainer's own `RunWriter`:
finished, running, failed, stale, corrupted and locked runs, in temporary runs directories."""
from __future__ import annotations

import os
import sqlite3
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.datasets import load_digits

from kd_engine.store import RunWriter

REPO = Path(__file__).resolve().parent.parent
CLASS_NAMES = [str(k) for k in range(10)]
TRAIN_IDS = list(range(0, 120))
VAL_IDS = list(range(120, 160))
TEST_IDS = list(range(160, 200))
EPOCHS = 3
LAYERS = ("layer1", "layer2")
CONFIG = {
    "name": "fixture_kd", "seed": 0, "epochs": EPOCHS, "device": "cpu",
    "data": {"name": "digits", "split_seed": 0},
    "teacher": {"name": "resnet", "params": {"width": 8, "depth": 1}},
    "student": {"name": "resnet", "params": {"width": 4, "depth": 1}},
    "distill": {"terms": [{"loss": "kd", "weight": 1.0, "params": {"temperature": 4.0}}]},
    "weighting": {"strategy": "teacher_confidence"},
}


def _instances(rng: np.random.Generator, split: str, ids: list[int], labels: np.ndarray, epoch: int,
               teacher: bool) -> dict[str, np.ndarray]:
    n = len(ids)
    y = labels[ids]
    student_pred = np.where(rng.random(n) < 0.8, y, rng.integers(0, 10, n))
    cols = {"split": np.full(n, split), "epoch": np.full(n, epoch), "step": np.full(n, 10 * epoch + 9),
            "instance_id": np.asarray(ids), "label": y, "student_loss": rng.gamma(2.0, 0.3, n),
            "student_pred": student_pred, "student_conf": rng.uniform(0.3, 1.0, n)}
    if teacher:
        cols.update(teacher_loss=rng.gamma(1.5, 0.2, n), teacher_pred=np.where(rng.random(n) < 0.9, y, (y + 1) % 10),
                    teacher_conf=rng.uniform(0.5, 1.0, n))
    if split == "train" and teacher:
        cols.update(distill_loss=rng.gamma(2.0, 0.5, n), weight=rng.uniform(0.2, 1.0, n) ** (epoch + 1),
                    term_kd=rng.gamma(2.0, 0.5, n), selected=(rng.random(n) < 0.25).astype(float))
    return cols


def build_run(runs_dir: Path, run_id: str, status: str = "finished", epochs: int = EPOCHS,
              teacher: bool = True, checkpoints: bool = True, error: str | None = None,
              name: str = "fixture_kd", vit_student: bool = False) -> Path:
    """A complete small run: scalars, instances, features, attention/feature maps, images and
    (optionally) real teacher/student checkpoints the Attention page can load."""
    rng = np.random.default_rng(zlib.crc32(run_id.encode()))
    digits = load_digits()
    config = dict(CONFIG, name=name, epochs=epochs)
    if not teacher:
        config = {k: v for k, v in config.items() if k not in ("teacher", "distill", "weighting")}
        config["method"] = "scratch"
    meta = {"method": config.get("method", "standard"), "dataset": "digits", "student": "resnet(depth=1, width=4)",
            "teacher": "resnet(depth=1, width=8)" if teacher else None, "weighting": "teacher_confidence",
            "seed": 0, "epochs": epochs, "device": "cpu", "student_params": 5000,
            "teacher_params": 20000 if teacher else None, "class_names": CLASS_NAMES, "input_shape": [1, 8, 8]}
    writer = RunWriter.create(runs_dir, name, meta, yaml.safe_dump(config), run_id=run_id, tensorboard=False)
    ids = np.arange(200)
    writer.save_images(ids, (digits.images[ids] / 16.0).astype(np.float32))
    step = 0
    for epoch in range(epochs):
        for _ in range(10):
            values = {"train/loss": 2.0 / (step + 1) + 0.1, "train/task": 1.5 / (step + 1), "lr": 0.05 * 0.9 ** epoch,
                      "train/student_loss": 1.5 / (step + 1)}
            if teacher:
                values.update({"train/distill": 0.5 / (step + 1), "train/term/kd": 0.5 / (step + 1),
                               "train/teacher_loss": 0.2, "train/weight_mean": 0.6})
            writer.log_scalars(step, epoch, values)
            step += 1
        writer.log_scalars(step, epoch, {"val/student_acc": 0.5 + 0.1 * epoch,
                                         **({"val/teacher_acc": 0.95} if teacher else {})})
        writer.flush()
        for split, split_ids in (("train", TRAIN_IDS), ("val", VAL_IDS)):
            writer.log_instances(_instances(rng, split, split_ids, digits.target, epoch, teacher))
        if teacher:
            writer.log_features(epoch, [(lay, lay, metric, float(rng.uniform(0.1, 0.9)))
                                        for lay in LAYERS for metric in ("cka", "disparity", "attention_mse")])
            meta_ids = VAL_IDS[:4]
            for role, width in (("student", 4), ("teacher", 8)):
                for lay, size in zip(LAYERS, (8, 4)):
                    maps = {"instance_ids": meta_ids, "layer": lay}
                    feats = rng.random((4, width * (1 if lay == "layer1" else 2), size, size))
                    writer.save_artifact(f"feature/e{epoch}/{role}/{lay}", feats, kind="feature_map",
                                         epoch=epoch, role=role, meta=maps)
                    writer.save_artifact(f"attention/e{epoch}/{role}/{lay}", (feats ** 2).mean(1),
                                         kind="attention_map", epoch=epoch, role=role, meta=maps)
    if status == "finished":
        writer.log_instances(_instances(rng, "test", TEST_IDS, digits.target, epochs - 1, teacher))
        final = {"test/student_acc": 0.81, "val/student_acc": 0.8, "student_params": 5000.0}
        if teacher:
            final.update({"test/teacher_acc": 0.93, "val/teacher_acc": 0.95})
        writer.set_meta(final_metrics=final)
    if checkpoints:
        _save_checkpoints(writer.run_dir, teacher, vit_student)
    writer.set_status(status, error=error)
    if status == "stale":
        writer.set_meta(status="running", pid=2 ** 22 + 7, heartbeat=time.time() - 3600)
    writer.close()
    return writer.run_dir


def _save_checkpoints(run_dir: Path, teacher: bool, vit_student: bool = False) -> None:
    import torch

    from kd_engine.models import build_model
    from kd_engine.trainers.checkpoint import save_weights

    class Spec:
        def __init__(self, name, params):
            self.name, self.params = name, params

    torch.manual_seed(0)
    student = Spec("vit", {"patch": 2, "dim": 16, "depth": 2, "heads": 2}) if vit_student else \
        Spec("resnet", {"width": 4, "depth": 1})
    roles = [("student", student)] + ([("teacher", Spec("resnet", {"width": 8, "depth": 1}))] if teacher else [])
    for role, spec in roles:
        model = build_model(spec, (1, 8, 8), 10)
        save_weights(model, run_dir / "checkpoints" / f"{role}.safetensors",
                     {"model": spec.name, "params": spec.params})


def corrupt_run(runs_dir: Path, run_id: str = "20260101-000000-corrupt-dead") -> Path:
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "store.sqlite").write_bytes(np.random.default_rng(0).bytes(8192))
    return run_dir


class LockedRun:
    """A run whose database another process holds an exclusive lock on (rollback-journal mode,
    where a writer's exclusive lock blocks readers)."""

    def __init__(self, runs_dir: Path, run_id: str = "20260101-000001-locked-0000"):
        self.run_dir = build_run(runs_dir, run_id, checkpoints=False, epochs=1)
        db = self.run_dir / "store.sqlite"
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.close()
        self.conn = sqlite3.connect(db, isolation_level=None, timeout=5)
        self.conn.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


@pytest.fixture(scope="session")
def finished_dir(tmp_path_factory) -> Path:
    """Two finished runs (a distillation and a scratch baseline) and a failed one."""
    base = tmp_path_factory.mktemp("runs_finished")
    build_run(base, "20260101-000100-fixture_kd-aaaa")
    build_run(base, "20260101-000200-fixture_scratch-bbbb", teacher=False, name="fixture_scratch")
    build_run(base, "20260101-000050-fixture_kd-fail", status="failed", epochs=1, checkpoints=False,
              error="loss became NaN at step 12 (NonFiniteLossError)")
    return base


# Writers of the fixture runs that are "still training": a run is live while its writer holds
# the run's lock, so the fixture keeps it open and a test appends rows through it.
LIVE_WRITERS: dict[Path, RunWriter] = {}


@pytest.fixture
def running_dir(tmp_path):
    """One run still training: status running, this process's pid, a fresh heartbeat, and its
    writer (in LIVE_WRITERS) holding the run's lock."""
    base = tmp_path / "runs"
    run_dir = build_run(base, "20260101-000300-fixture_kd-live", status="running", epochs=2)
    writer = RunWriter(run_dir, tensorboard=False)
    writer.set_meta(pid=os.getpid(), heartbeat=time.time())
    LIVE_WRITERS[run_dir] = writer
    yield base
    LIVE_WRITERS.pop(run_dir).close()


@pytest.fixture
def broken_dir(tmp_path) -> Path:
    """Only broken runs: one corrupted database and one stale (killed) run."""
    base = tmp_path / "runs"
    corrupt_run(base)
    build_run(base, "20260101-000400-fixture_kd-stale", status="stale", epochs=1, checkpoints=False)
    return base


# -- AppTest helpers shared by the dashboard tests ------------------------------------------------
def open_page(runs_dir: Path, run_id: str, page: str, monkeypatch, errors: bool = False):
    """The dashboard on `page` (a module under workbench/pages) with `run_id` selected; no
    exception on the way (and, with `errors`, no `st.error` either)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("KDW_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
    at.session_state["kdw_run"] = run_id
    at.run()
    at.switch_page(f"workbench/pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    if errors:
        assert not at.error, [e.value for e in at.error]
    return at


def open_instances(runs_dir: Path, run_id: str, monkeypatch):
    return open_page(runs_dir, run_id, "instances", monkeypatch)


def chart_specs(at) -> list[dict]:
    """Every Plotly figure on the page, as its JSON spec."""
    import json

    return [json.loads(element.proto.spec) for element in at.get("plotly_chart")]


def charts(at) -> dict[str, dict]:
    """The page's Plotly figures by title."""
    return {(spec["layout"].get("title") or {}).get("text", ""): spec for spec in chart_specs(at)}
