"""The run store's public read API, exercised on runs written by `RunWriter` (no training)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from kd_engine.store import Run, RunWriter, StoreError, list_runs, open_run, resolve_run

LIST_COLUMNS = ["run_id", "status", "name", "method", "dataset", "teacher", "student", "created",
                "error", "warning", "path"]


def make_run(runs_dir, run_id="r1", **meta):
    base = {"method": "standard", "dataset": "digits", "student": "resnet(width=8)", "teacher": None}
    base.update(meta)
    return RunWriter.create(runs_dir, "exp", base, "name: exp\n", run_id=run_id, tensorboard=False)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def instance_columns(split, epoch, ids, **extra):
    n = len(ids)
    columns = {"split": np.full(n, split), "epoch": np.full(n, epoch), "step": np.arange(n),
               "instance_id": np.asarray(ids), "label": np.asarray(ids) % 10,
               "weight": np.linspace(0.1, 1.0, n)}
    columns.update(extra)
    return columns


# -- listing --------------------------------------------------------------------------------------
def test_list_runs_on_empty_or_missing_dir(tmp_path):
    for folder in (tmp_path, tmp_path / "does-not-exist"):
        frame = list_runs(folder)
        assert isinstance(frame, pd.DataFrame) and frame.empty
        assert list(frame.columns) == LIST_COLUMNS


def test_corrupted_store_is_listed_as_corrupt(tmp_path):
    good = make_run(tmp_path, "good")
    good.set_meta(final_metrics={"test/student_acc": 0.5})
    good.set_status("finished")
    good.close()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "store.sqlite").write_bytes(np.random.default_rng(0).bytes(8192))
    frame = list_runs(tmp_path).set_index("run_id")
    assert set(frame.index) == {"good", "bad"}
    assert frame.loc["bad", "status"] == "corrupt"
    assert isinstance(frame.loc["bad", "error"], str) and "store.sqlite" in frame.loc["bad", "error"]
    assert frame.loc["good", "status"] == "finished"
    assert frame.loc["good", "test/student_acc"] == 0.5
    with pytest.raises(StoreError, match="unreadable run database"):
        Run(bad).meta()


def test_newest_first_and_meta_columns(tmp_path):
    first = make_run(tmp_path, "first")
    first.set_meta(created=100.0)
    first.close()
    second = make_run(tmp_path, "second", method="scratch")
    second.set_meta(created=200.0)
    second.close()
    frame = list_runs(tmp_path)
    assert frame.run_id.tolist() == ["second", "first"]
    assert frame.method.tolist() == ["scratch", "standard"]
    # closed writers left status "running": nobody holds the runs' writer locks, so they are stale
    assert frame.status.tolist() == ["stale", "stale"]


# -- status ---------------------------------------------------------------------------------------
def test_stale_detection(tmp_path):
    # Stale means that no process holds the run's writer lock (kd_engine.store.lock); a live
    # writer whose heartbeat is late or in the future is "not responding", never stale.
    writer = make_run(tmp_path)
    run = open_run("r1", tmp_path)
    assert run.status() == "running"  # fresh heartbeat, lock held (by us)
    writer.set_meta(heartbeat=time.time() - 3600, pid=dead_pid())
    assert run.status() == "not responding"
    assert list_runs(tmp_path).status.tolist() == ["not responding"]
    writer.set_meta(heartbeat=time.time() + 86400)
    assert run.status() == "not responding"  # a heartbeat in the future is suspect
    writer.set_meta(heartbeat=time.time(), pid=os.getpid())
    assert run.status() == "running"
    for status in ("finished", "failed", "stopped"):
        writer.set_status(status, error="boom" if status == "failed" else None)
        writer.set_meta(heartbeat=0, pid=dead_pid())
        assert run.status() == status  # only running runs can go stale
    assert run.meta()["error"] is None
    writer.set_status("running")
    writer.close()  # the lock is free: however fresh the heartbeat, the run is stale
    assert run.status() == "stale"


def test_a_new_store_is_starting_until_its_metadata_lands(tmp_path, monkeypatch):
    """The dashboard may read a store in the instant after its tables exist: it must read as
    starting (still going to write), and `create` writes the status with its first metadata."""
    bare = RunWriter(tmp_path / "bare", tensorboard=False)  # tables, no metadata yet
    assert open_run("bare", tmp_path).status() == "starting"
    bare.close()
    first_writes = []
    original = RunWriter.set_meta
    monkeypatch.setattr(RunWriter, "set_meta", lambda self, **items: (first_writes.append(set(items)),
                                                                      original(self, **items))[1])
    writer = RunWriter.create(tmp_path, "exp", {"method": "standard"}, "name: exp\n", run_id="r1")
    assert {"status", "name", "created", "heartbeat"} <= first_writes[0]
    assert open_run("r1", tmp_path).status() == "running"
    writer.close()


# -- scalars --------------------------------------------------------------------------------------
def test_scalars_since_rowid_returns_only_new_rows(tmp_path):
    writer = make_run(tmp_path)
    writer.log_scalars(0, 0, {"train/loss": 2.0, "lr": 0.1})
    writer.log_scalars(1, 0, {"train/loss": 1.5})
    writer.flush()
    run = open_run("r1", tmp_path)
    first = run.scalars()
    assert list(first.columns) == ["rowid", "step", "epoch", "key", "value", "wall"]
    assert first.key.tolist() == ["train/loss", "lr", "train/loss"]
    last = int(first.rowid.max())
    assert run.scalars(since_rowid=last).empty
    writer.log_scalars(2, 1, {"train/loss": 1.0, "lr": 0.05})
    assert run.scalars(since_rowid=last).empty  # buffered until flush
    writer.flush()
    new = run.scalars(since_rowid=last)
    assert new.step.tolist() == [2, 2] and new.value.tolist() == [1.0, 0.05]
    assert (new.rowid > last).all()
    assert run.scalars(keys=["lr"]).value.tolist() == [0.1, 0.05]
    assert run.scalar_keys() == ["lr", "train/loss"]
    writer.close()


# -- instances ------------------------------------------------------------------------------------
def test_instances_filters_and_new_columns(tmp_path):
    writer = make_run(tmp_path)
    writer.log_instances(instance_columns("train", 0, [10, 11, 12, 13]))
    writer.log_instances(instance_columns("train", 1, [13, 12, 11, 10]))
    writer.log_instances(instance_columns("val", 1, [20, 21]))
    run = open_run("r1", tmp_path)
    assert len(run.instances()) == 8  # default split: train
    assert len(run.instances(split=None)) == 10
    assert sorted(run.instances(split="val").instance_id) == [20, 21]
    epoch1 = run.instances(epoch=1)
    assert epoch1.instance_id.tolist() == [13, 12, 11, 10] and set(epoch1.epoch) == {1}
    picked = run.instances(split=None, instance_ids=[12, 21])
    assert sorted(picked.instance_id) == [12, 12, 21]
    only = run.instances(epoch=0, instance_ids=[11], columns=["instance_id", "weight"])
    assert list(only.columns) == ["instance_id", "weight"] and only.instance_id.tolist() == [11]
    assert len(run.instances(limit=3)) == 3
    assert run.instance_epochs("train") == [0, 1] and run.instance_epochs("val") == [1]
    assert run.count_instances() == 10 and run.count_instances("val") == 2
    with pytest.raises(StoreError, match="my_score"):
        run.instances(columns=["instance_id", "my_score"])

    # a method's own per-instance quantity becomes a new column on first use
    assert "my_score" not in run.instance_columns()
    writer.log_instances(instance_columns("train", 2, [10, 11], my_score=np.array([0.25, 0.75])))
    assert "my_score" in run.instance_columns()
    scores = run.instances(epoch=2, columns=["instance_id", "my_score"])
    assert scores.my_score.tolist() == [0.25, 0.75]
    assert run.instances(epoch=0, columns=["my_score"]).my_score.isna().all()
    with pytest.raises(ValueError, match="column name"):
        writer.log_instances(instance_columns("train", 3, [1], **{"bad name;": np.array([1.0])}))
    with pytest.raises(ValueError, match="different lengths"):
        writer.log_instances({"instance_id": np.array([1, 2]), "label": np.array([1])})
    writer.close()


def test_truncate_from_epoch_drops_only_later_epochs(tmp_path):
    writer = make_run(tmp_path)
    for epoch in range(3):
        writer.log_scalars(epoch, epoch, {"train/loss": float(epoch)})
        writer.log_instances(instance_columns("train", epoch, [1, 2]))
    writer.flush()
    writer.truncate_from_epoch(1)
    run = open_run("r1", tmp_path)
    assert run.scalars().epoch.tolist() == [0]
    assert run.instance_epochs() == [0]
    writer.close()


# -- artifacts, events, resolution ----------------------------------------------------------------
def test_artifacts_images_and_events(tmp_path):
    writer = make_run(tmp_path)
    writer.save_images(np.array([5, 7]), np.stack([np.zeros((8, 8)), np.ones((8, 8))]))
    writer.save_artifact("attention/e0/student/layer1", np.full((2, 4, 4), 0.5), kind="attention_map",
                         epoch=0, role="student")
    writer.event("hello")
    run = open_run("r1", tmp_path)
    maps = run.artifacts("attention_map")
    assert maps.name.tolist() == ["attention/e0/student/layer1"] and maps.role.tolist() == ["student"]
    assert run.load_artifact("attention/e0/student/layer1").shape == (2, 4, 4)
    images = run.images([7, 5, 99])
    assert set(images) == {5, 7} and images[7].max() == 1.0 and images[5].max() == 0.0
    assert "hello" in run.events().message.tolist()
    with pytest.raises(StoreError, match="no artifact"):
        run.load_artifact("missing")
    writer.close()


def test_resolve_run(tmp_path):
    for run_id in ("20250101-a-1", "20250101-b-1", "20250102-c-1"):
        make_run(tmp_path, run_id).close()
    assert resolve_run("20250102", tmp_path).name == "20250102-c-1"
    assert resolve_run("b-1", tmp_path).name == "20250101-b-1"
    assert resolve_run(tmp_path / "20250101-a-1").name == "20250101-a-1"
    with pytest.raises(StoreError, match="ambiguous"):
        resolve_run("20250101", tmp_path)
    with pytest.raises(StoreError, match="not found"):
        resolve_run("zzz", tmp_path)
    with pytest.raises(StoreError, match="not a run directory"):
        Run(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        make_run(tmp_path, "20250101-a-1")
