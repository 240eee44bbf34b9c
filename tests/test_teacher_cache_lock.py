"""Runs that need the same uncached teacher at the same time (a notebook's parallel workers) train
it once: the others wait for it. With cross-fitted teachers, concurrent runs split the folds
between them instead of training the same fold twice."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from kd_engine import cache
from kd_engine.cache import fold_config, teacher_cache_path
from kd_engine.config import validate
from kd_engine.models import build_model
from kd_engine.trainers.checkpoint import save_weights

from conftest import digits_raw


def _stub_trainer(calls: list, lock: threading.Lock, seconds: float = 0.4):
    """Stands in for a teacher's scratch run: records which teacher it trains, takes a while,
    and leaves the checkpoint a finished run would."""

    def train_teacher(teacher_cfg) -> Path:
        with lock:
            calls.append(teacher_cfg.name)
        time.sleep(seconds)
        run_dir = Path(teacher_cfg.runs_dir) / f"{teacher_cfg.name}-{len(calls)}"
        model = build_model(teacher_cfg.student, (1, 8, 8), 10, field="student")
        save_weights(model, run_dir / "checkpoints" / "student.safetensors", {})
        return run_dir

    return train_teacher


def _concurrently(n: int, target) -> list:
    results, errors = [None] * n, []

    def run(i):
        try:
            results[i] = target()
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return results


def test_concurrent_runs_train_a_missing_teacher_once(tmp_path):
    cfg = validate(digits_raw(tmp_path / "runs", tmp_path / "cache"))
    calls, lock = [], threading.Lock()
    stub = _stub_trainer(calls, lock)
    results = _concurrently(3, lambda: cache.build_teacher(cfg, (1, 8, 8), 10, train_teacher=stub))
    assert len(calls) == 1, calls
    path = teacher_cache_path(cfg)
    assert path.is_file() and all(source == str(path) for _, source in results)


def test_concurrent_cross_fitted_runs_split_the_folds(tmp_path, monkeypatch):
    cfg = validate(digits_raw(tmp_path / "runs", tmp_path / "cache"))
    teacher = cfg.teacher.model_copy(update={"cross_fit": 2})
    cfg = cfg.model_copy(update={"teacher": teacher})
    # the digits task has no image ids to route by; the fold plumbing is what is tested here
    monkeypatch.setattr(cache, "CrossFitTeacher", lambda folds: folds[0])
    calls, lock = [], threading.Lock()
    stub = _stub_trainer(calls, lock)
    started = time.perf_counter()
    _concurrently(2, lambda: cache.build_teacher(cfg, (1, 8, 8), 10, train_teacher=stub))
    elapsed = time.perf_counter() - started
    names = {cache.teacher_training_config(fold_config(cfg, k)).name for k in range(2)}
    assert sorted(calls) == sorted(names), calls  # each fold once
    assert elapsed < 2 * 0.4 + 0.35, f"the folds trained one after the other ({elapsed:.2f} s)"
    assert all(teacher_cache_path(fold_config(cfg, k)).is_file() for k in range(2))
