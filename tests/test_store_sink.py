"""The store's instance writer thread (kd_engine.store.sink): queued rows land in order and are
all committed when `drain` returns; a failed write surfaces as its own error in the caller's
thread, at the next drain, and nothing after it is written; closing a writer commits what was
queued. (Crash and resume with queued chunks: tests/test_faults.py.)"""
from __future__ import annotations

import sqlite3

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
    writer.drain_instances()
    rows = writer.conn.execute("SELECT instance_id, weight FROM instances ORDER BY rowid").fetchall()
    assert [r[0] for r in rows] == list(range(1000))
    assert rows[999][1] == pytest.approx(9.99)
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
        writer.drain_instances()
    writer.drain_instances()  # the error is reported once
    ids = [r[0] for r in writer.conn.execute("SELECT instance_id FROM instances")]
    assert ids == [0, 1, 2]
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
    conn = sqlite3.connect(tmp_path / "r" / "store.sqlite")
    assert conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 50
    conn.close()
    RunWriter.reopen(tmp_path / "r", tensorboard=False).close()  # the lock was given back


def test_truncation_waits_for_queued_rows(tmp_path):
    """A resume deletes the epochs it redoes: rows still queued must not land after the delete."""
    writer = _writer(tmp_path)
    writer.queue_instances(_chunk(0, 400, epoch=0))
    writer.queue_instances(_chunk(400, 400, epoch=1))
    writer.truncate_from_epoch(1)
    assert writer.epoch_counts(0)["train"] == 400 and writer.epoch_counts(1)["train"] == 0
    writer.close()
