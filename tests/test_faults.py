"""Fault injection: a trainer SIGKILLed at each named crash point (`kd_engine.faults`), then
resumed, ends with exactly what an uninterrupted run records: the same student weights, the same
per-instance rows, the same scalars (timings aside), the same final metrics.

Also: a store that lost committed records (a truncated WAL, an emptied database) is refused in
one line and never marked finished over the gap; two writers cannot share a run; a run that
diverges to chance accuracy finishes with a warning. (A full disk, on a real tmpfs, is in
tests/test_integrity_disk.py.)
"""
from __future__ import annotations

import math
import shutil
import signal
import subprocess

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import PYTHON, REPO, subprocess_env, write_config
from integrity_runs import TINY, Holder, tiny_raw, train_rows
from kd_engine.config import validate
from kd_engine.store import StoreError, open_run
from kd_engine.store.lock import RunBusyError

EPOCHS = 3
TIMINGS = ("throughput", "epoch_time")  # wall-clock measurements: present in both, never equal


def _first_chunk_of_epoch_1() -> int:
    """Which instance transaction writes epoch 1's first training rows: each epoch commits its
    training rows in chunks of INSTANCE_CHUNK_STEPS steps, then its validation rows. A kill
    there leaves a committed part of an epoch the checkpoint does not count."""
    from kd_engine.trainers.loop import INSTANCE_CHUNK_STEPS

    steps = math.ceil(TRAIN_SIZE / TINY["data"]["batch_size"])
    return math.ceil(steps / INSTANCE_CHUNK_STEPS) + 1 + 1


TRAIN_SIZE = 1167  # the tiny run's digits training split (checked by test_the_tiny_runs_training_split_size)
# point -> which hit of it kills; checkpoints one per epoch (the 2nd is epoch 1's)
POINTS = {"instances_txn": _first_chunk_of_epoch_1(), "instances_commit": _first_chunk_of_epoch_1(),
          "state_written": 2, "checkpointed": 2, "final_eval": 1}


def _train_in_process(raw, run_id):
    from kd_engine.run import train

    return train(validate(raw), run_id=run_id, distributed=False)


def _resume_in_process(run_dir):
    from kd_engine.run import train

    return train(None, resume=run_dir, distributed=False)


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """The reference run, and one run killed at each point (killed in parallel subprocesses, so
    the module costs about one run's wall time more than the reference)."""
    base = tmp_path_factory.mktemp("faults")
    raw = tiny_raw(base / "runs", epochs=EPOCHS)
    config = write_config(base / "tiny.yaml", raw)
    victims = {}
    for point, hit in POINTS.items():
        env = dict(subprocess_env(), KDW_FAULT=f"{point}:{hit}")
        victims[point] = subprocess.Popen([PYTHON, "-m", "kd_engine.cli", "train", str(config), "--run-id",
                                           point, "--runs-dir", str(base / "runs")], cwd=REPO, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reference = _train_in_process(raw, "reference")
    for point, process in victims.items():
        _, err = process.communicate(timeout=600)
        assert process.returncode == -signal.SIGKILL, (point, err[-2000:])
        shutil.copytree(base / "runs" / point, base / "copies" / point)  # as killed, for other tests
    return {"reference": reference, "runs": base / "runs", "copies": base / "copies"}


def _rows(run_dir) -> pd.DataFrame:
    frame = open_run(run_dir).instances(split=None)
    return frame.sort_values(sorted(frame.columns)).reset_index(drop=True)


def _scalars(run_dir) -> pd.DataFrame:
    frame = open_run(run_dir).scalars().drop(columns=["rowid", "wall"])
    frame.loc[frame.key.isin(TIMINGS), "value"] = 0.0
    return frame.sort_values(["key", "step", "epoch"]).reset_index(drop=True)


def _same_run(run_dir, reference) -> None:
    ours, theirs = (load_file(str(d / "checkpoints" / "student.safetensors")) for d in (run_dir, reference))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), "the student weights differ"
    pd.testing.assert_frame_equal(_rows(run_dir), _rows(reference))
    pd.testing.assert_frame_equal(_scalars(run_dir), _scalars(reference))
    run, ref = open_run(run_dir), open_run(reference)
    assert run.status() == "finished"
    assert run.final_metrics() == ref.final_metrics() and "test/student_acc" in run.final_metrics()


def test_the_tiny_runs_training_split_size(tmp_path):
    """The kill points above count on this size: a changed split moves them."""
    from kd_engine.data import build_data

    cfg = validate(tiny_raw(tmp_path))
    assert len(build_data(cfg.data, cfg.seed).train) == TRAIN_SIZE


@pytest.mark.parametrize("point", list(POINTS))
def test_killed_at_a_point_resumes_to_the_uninterrupted_run(killed, point):
    run_dir = killed["runs"] / point
    assert open_run(run_dir).status() == "stale"  # killed: no trainer holds it
    assert not list(run_dir.glob("checkpoints/*.tmp")) or point == "state_written"
    _resume_in_process(run_dir)
    _same_run(run_dir, killed["reference"])
    assert not list(run_dir.glob("checkpoints/*.tmp")) or point == "state_written"


def test_a_truncated_wal_is_refused_and_never_finished(killed, tmp_path):
    run_dir = shutil.copytree(killed["copies"] / "checkpointed", tmp_path / "wal")
    wal = run_dir / "store.sqlite-wal"
    assert wal.stat().st_size > 0, "the killed run's records should still be in its WAL"
    with open(wal, "r+b") as handle:
        handle.truncate(wal.stat().st_size // 2)
    with pytest.raises(StoreError, match="lost records the checkpoint counts as committed") as info:
        _resume_in_process(run_dir)
    assert "\n" not in str(info.value)
    run = open_run(run_dir)
    assert run.status() == "failed" and "lost records" in run.meta()["error"]
    with pytest.raises(StoreError):  # and again: a failed resume never "repairs" the gap
        _resume_in_process(run_dir)
    assert open_run(run_dir).status() == "failed"


def test_an_emptied_store_is_refused(killed, tmp_path):
    run_dir = shutil.copytree(killed["copies"] / "checkpointed", tmp_path / "zero")
    for name in ("store.sqlite-wal", "store.sqlite-shm"):
        (run_dir / name).unlink(missing_ok=True)
    (run_dir / "store.sqlite").write_bytes(b"")
    with pytest.raises(StoreError, match="missing or empty"):
        _resume_in_process(run_dir)
    assert (run_dir / "store.sqlite").stat().st_size == 0  # no fresh store written over the loss
    damaged = shutil.copytree(killed["copies"] / "checkpointed", tmp_path / "garbage")
    for name in ("store.sqlite-wal", "store.sqlite-shm"):
        (damaged / name).unlink(missing_ok=True)
    (damaged / "store.sqlite").write_bytes(b"not a database " * 512)
    with pytest.raises(StoreError, match="unreadable run database .* cannot be resumed"):
        _resume_in_process(damaged)


def test_two_writers_cannot_resume_one_run(killed, tmp_path):
    run_dir = shutil.copytree(killed["copies"] / "checkpointed", tmp_path / "two")
    holder = Holder(run_dir)
    try:
        with pytest.raises(RunBusyError, match="another live trainer"):
            _resume_in_process(run_dir)
    finally:
        holder.end()
    assert sorted(train_rows(run_dir)) == [0, 1]  # the refused resume truncated nothing


def test_divergence_to_chance_finishes_with_a_warning(tmp_path):
    run_dir = _train_in_process(tiny_raw(tmp_path / "runs", epochs=2, optimizer={"name": "sgd", "lr": 10.0}),
                                "diverged")
    run = open_run(run_dir)
    assert run.status() == "finished"
    assert run.final_metrics()["test/student_acc"] < 0.15
    assert "at chance level" in run.meta()["warning"]
    assert "at chance level" in run.events().message.iloc[-2]


def test_nothing_saved_is_said_when_nothing_was_saved(tmp_path, capsys):
    from kd_engine.cli import main

    config = write_config(tmp_path / "nan.yaml",
                          tiny_raw(tmp_path / "runs", optimizer={"name": "sgd", "lr": 1e6}))
    assert main(["train", str(config), "--run-id", "nan"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: non-finite loss") and "nothing was saved" in err
    assert "last good checkpoint" not in err
    assert open_run(tmp_path / "runs" / "nan").status() == "failed"
