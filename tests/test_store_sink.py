"""The store's writer thread (kd_engine.store.sink): queued rows and scalars land in order and are
all committed when `drain` returns; a failed write surfaces as its own error in the caller's
thread, at the next drain, and nothing after it is written; closing a writer commits what was
queued. (Crash and resume with queued chunks: tests/test_faults.py.)"""
from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pytest

from kd_engine.store import open_run
from kd_engine.store.writer import RunWriter


def _writer(tmp_path, run_id="r"):
    return RunWriter.create(tmp_path, "sink", {"task": "classification"}, "name: sink\n", run_id=run_id,
                            tensorboard=False)


def _chunk(start, n, epoch=0, **extra):
    ids = np.arange(start, start + n)
    return {"split": np.full(n, "train"), "epoch": np.full(n, epoch), "step": ids // 4,
            "instance_id": ids, "label": ids % 3, "weight": ids / 100.0, **extra}


def test_queued_chunks_are_committed_in_order_when_drained(tmp_path):
    writer = _writer(tmp_path)
    for k in range(20):
        writer.queue_instances(_chunk(50 * k, 50))
    writer.drain()
    frame = open_run(tmp_path / "r").instances(columns=["instance_id", "weight"])
    assert frame.instance_id.tolist() == list(range(1000))
    assert frame.weight.iloc[999] == pytest.approx(9.99)
    writer.close()


def test_a_new_column_is_added_once_by_the_writer_thread(tmp_path):
    writer = _writer(tmp_path)
    writer.queue_instances(_chunk(0, 5, term_kd=np.ones(5)))
    writer.log_instances(_chunk(5, 5, term_kd=np.full(5, 2.0)))  # waits, then the next one adds nothing
    writer.close()
    frame = open_run(tmp_path / "r").instances(split="train")
    assert sorted(frame["term_kd"].tolist()) == [1.0] * 5 + [2.0] * 5


def test_a_failed_write_is_raised_at_the_next_drain_and_stops_the_queue(tmp_path):
    writer = _writer(tmp_path)
    writer.queue_instances(_chunk(0, 3))
    writer.queue_instances({"split": np.full(2, "train"), "bad name;": np.zeros(2)})  # refused identifier
    writer.queue_instances(_chunk(3, 3))  # after a failure nothing more is written
    with pytest.raises(ValueError, match="invalid per-instance column name"):
        writer.drain()
    writer.drain()  # the error is reported once
    assert open_run(tmp_path / "r").instances().instance_id.tolist() == [0, 1, 2]
    writer.close()


def test_columns_of_different_lengths_are_refused_in_the_callers_thread(tmp_path):
    writer = _writer(tmp_path)
    with pytest.raises(ValueError, match="different lengths"):
        writer.queue_instances({"instance_id": np.arange(3), "label": np.arange(2)})
    writer.close()


def test_close_commits_what_was_queued_and_releases_the_run(tmp_path):
    writer = _writer(tmp_path)
    for k in range(5):
        writer.queue_instances(_chunk(10 * k, 10))
    writer.close()
    assert open_run(tmp_path / "r").count_instances() == 50
    RunWriter.reopen(tmp_path / "r", tensorboard=False).close()  # the lock was given back


def test_truncation_waits_for_queued_rows(tmp_path):
    """A resume deletes the epochs it redoes: rows still queued must not land after the delete."""
    writer = _writer(tmp_path)
    writer.queue_instances(_chunk(0, 400, epoch=0))
    writer.queue_instances(_chunk(400, 400, epoch=1))
    writer.truncate_from_epoch(1)
    assert writer.epoch_counts(0)["train"] == 400 and writer.epoch_counts(1)["train"] == 0
    writer.close()


def test_scalars_and_heartbeats_queued_without_waiting_land_in_order_at_the_drain(tmp_path):
    """The trainer's flushes during an epoch do not wait: scalars and heartbeats go through the
    same thread as the rows, in order, and are committed when the epoch's end drains."""
    writer = _writer(tmp_path)
    for step in range(50):
        writer.log_scalars(step, 0, {"train/loss": 1.0 / (step + 1), "lr": 0.1})
        if step % 10 == 9:
            writer.flush(wait=False)
            writer.heartbeat(wait=False)
            writer.queue_instances(_chunk(step, 2))
    writer.drain()
    frame = open_run(tmp_path / "r").scalars(keys=["train/loss"])
    assert frame.step.tolist() == list(range(50))  # rowid order is step order
    assert frame.value.iloc[-1] == pytest.approx(1 / 50)
    assert writer.epoch_counts(0) == {"train": 10, "val": 0, "scalars": 100, "features": 0}
    beat = open_run(tmp_path / "r").meta()["heartbeat"]
    writer.close()
    assert isinstance(beat, float) and beat > 0


def test_close_commits_buffered_scalars_after_queued_rows(tmp_path):
    writer = _writer(tmp_path)
    writer.queue_instances(_chunk(0, 4))
    writer.log_scalars(3, 0, {"train/loss": 0.5})
    writer.close()
    run = open_run(tmp_path / "r")
    assert run.scalars().key.tolist() == ["train/loss"] and run.count_instances() == 4


def test_a_failed_scalar_write_is_raised_in_the_callers_thread(tmp_path):
    """A write that fails on the writer thread (here, refused by a trigger) is the caller's error
    at the next drain, and the instance rows queued after it are not written."""
    writer = _writer(tmp_path)
    writer.conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON scalars BEGIN SELECT RAISE(ABORT, 'no scalars'); END")
    gate = threading.Event()  # the writer thread waits until both writes are queued (else the
    writer.queue_instances(lambda: gate.wait(10) and {})  # error may surface at the second's queueing)
    writer.log_scalars(0, 0, {"train/loss": 0.5})
    writer.flush(wait=False)
    writer.queue_instances(_chunk(0, 3))
    gate.set()
    with pytest.raises(sqlite3.IntegrityError, match="no scalars"):
        writer.drain()
    assert open_run(tmp_path / "r").count_instances() == 0
    writer.close()


def test_scalars_made_on_the_writer_thread_keep_their_order(tmp_path):
    """`queue_scalars` calls its function on the writer thread: the scalars logged before it land
    first, and an error raised while making them is the caller's at the next drain."""
    writer = _writer(tmp_path)
    made_on = []

    def make():
        made_on.append(threading.current_thread().name)
        return [(1, {"train/loss": 0.5, "lr": 0.1}), (2, {"train/loss": 0.25, "lr": 0.1})]

    writer.log_scalars(0, 0, {"grad_norm": 3.0})
    writer.queue_scalars(0, 1, make)
    writer.drain()
    frame = open_run(tmp_path / "r").scalars()
    assert list(zip(frame.step, frame.key)) == [(0, "grad_norm"), (1, "train/loss"), (1, "lr"), (2, "train/loss"),
                                                (2, "lr")]
    assert made_on == ["kdw-row-sink"]

    def broken():
        raise RuntimeError("no table for these scalars")

    writer.queue_scalars(0, 3, broken)
    with pytest.raises(RuntimeError, match="no table for these scalars"):
        writer.drain()
    writer.close()
