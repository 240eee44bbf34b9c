"""Per-instance rows stored by column (kd_engine.store.chunks): what the read API returns is what
was written, in order, with the row store's types; queries by split, epoch, ids and limit cross
chunk boundaries; truncation leaves no orphaned column; a damaged chunk is one StoreError line;
stores written as SQL rows (schema 1) still read."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kd_engine.store import RunWriter, StoreError, open_run
from raw_store import raw_instances


def _writer(tmp_path, run_id="r"):
    return RunWriter.create(tmp_path, "chunks", {"task": "classification"}, "name: chunks\n", run_id=run_id,
                            tensorboard=False)


def _rows(ids, split="train", epoch=0, **extra):
    ids = np.asarray(ids)
    return {"split": np.full(len(ids), split), "epoch": np.full(len(ids), epoch), "step": np.arange(len(ids)),
            "instance_id": ids, "label": ids % 7, "weight": (ids / 3.0).astype(np.float32),
            "teacher_loss": ids * 0.1, **extra}


def test_values_and_types_read_back_as_written(tmp_path):
    writer = _writer(tmp_path)
    big = np.array([3, 2**40, -(2**35)])  # ids beyond int32 stay exact
    writer.log_instances(_rows(big))
    writer.log_instances(_rows([7, 8, 9]))
    writer.close()
    frame = open_run(tmp_path / "r").instances(columns=["split", "epoch", "instance_id", "label", "weight",
                                                        "teacher_loss"])
    assert frame.instance_id.tolist() == [3, 2**40, -(2**35), 7, 8, 9]
    assert frame.instance_id.dtype == np.int64 and frame.label.dtype == np.int64
    assert frame.label.tolist() == [int(v) for v in np.r_[big, [7, 8, 9]] % 7]
    # a float32 tensor's values come back as the same doubles SQLite held; float64 exactly
    assert frame.weight.tolist() == [float(np.float32(v / 3.0)) for v in [3, 2**40, -(2**35), 7, 8, 9]]
    assert frame.teacher_loss.tolist() == [v * 0.1 for v in [3, 2**40, -(2**35), 7, 8, 9]]
    assert set(frame.split) == {"train"} and set(frame.epoch) == {0}


def test_one_write_of_several_splits_and_epochs_keeps_its_order(tmp_path):
    writer = _writer(tmp_path)
    parts = [_rows([1, 2]), _rows([3], "val"), _rows([4, 5], epoch=1)]
    columns = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    writer.log_instances(columns)
    writer.close()
    run = open_run(tmp_path / "r")
    frame = run.instances(split=None, columns=["split", "epoch", "instance_id"])
    assert list(frame.itertuples(index=False, name=None)) == [("train", 0, 1), ("train", 0, 2), ("val", 0, 3),
                                                              ("train", 1, 4), ("train", 1, 5)]
    assert run.count_instances() == 5 and run.count_instances("train") == 4
    assert run.instance_epochs("train") == [0, 1] and run.instance_epochs("val") == [0]


def test_queries_cross_chunk_boundaries(tmp_path):
    writer = _writer(tmp_path)
    for epoch in range(3):
        for start in range(0, 40, 10):
            writer.queue_instances(_rows(np.arange(start, start + 10), epoch=epoch))
    writer.drain()
    writer.close()
    run = open_run(tmp_path / "r")
    history = run.instances(instance_ids=[5, 35], columns=["epoch", "instance_id", "weight"])
    assert list(zip(history.epoch, history.instance_id)) == [(e, i) for e in range(3) for i in (5, 35)]
    assert run.instances(epoch=2, instance_ids=[39]).instance_id.tolist() == [39]
    assert run.instances(instance_ids=[1000]).empty
    limited = run.instances(limit=25, columns=["epoch", "instance_id"])
    assert limited.instance_id.tolist() == list(range(25))
    assert run.instances(instance_ids=[5, 35], limit=3).instance_id.tolist() == [5, 35, 5]
    assert len(run.instances()) == 120 and len(run.instances(epoch=1)) == 40
    pd.testing.assert_frame_equal(run.instances(columns=["epoch", "instance_id", "label"]),
                                  raw_instances(tmp_path / "r", ["epoch", "instance_id", "label"], "train")
                                  .astype("int64"))


def test_a_column_some_chunks_lack_reads_as_missing(tmp_path):
    writer = _writer(tmp_path)
    writer.log_instances(_rows([1, 2]))
    writer.log_instances(_rows([3], term_kd=np.array([0.5])))
    writer.log_instances({"split": np.array(["val"]), "epoch": np.array([0]), "instance_id": np.array([4])})
    writer.close()
    frame = open_run(tmp_path / "r").instances(split=None, columns=["instance_id", "term_kd", "label"])
    assert frame.instance_id.tolist() == [1, 2, 3, 4]
    assert frame.term_kd.isna().tolist() == [True, True, False, True] and frame.term_kd[2] == 0.5
    assert frame.label.isna().tolist() == [False, False, False, True]  # an integer column with gaps: floats


def test_truncation_removes_the_chunks_and_their_columns(tmp_path):
    writer = _writer(tmp_path)
    for epoch in range(3):
        writer.log_instances(_rows([1, 2, 3], epoch=epoch))
    writer.log_instances(_rows([9], split="test", epoch=2))
    writer.truncate_final(2)
    assert writer.epoch_counts(2)["train"] == 3
    writer.truncate_from_epoch(1)
    counts = [writer.epoch_counts(e)["train"] for e in range(3)]
    orphans = writer.conn.execute("SELECT COUNT(*) FROM instance_values WHERE chunk NOT IN "
                                  "(SELECT id FROM instance_chunks)").fetchone()[0]
    writer.close()
    assert counts == [3, 0, 0] and orphans == 0
    assert open_run(tmp_path / "r").count_instances(None) == 3


def test_a_damaged_chunk_is_one_store_error_line(tmp_path):
    writer = _writer(tmp_path)
    writer.log_instances(_rows([1, 2, 3]))
    writer.conn.execute("UPDATE instance_values SET data = x'00ff' WHERE name = 'weight'")
    writer.conn.execute("UPDATE instance_values SET dtype = 'O' WHERE name = 'label'")
    writer.close()
    run = open_run(tmp_path / "r")
    with pytest.raises(StoreError, match="does not decode") as error:
        run.instances(columns=["weight"])
    assert "\n" not in str(error.value) and "store.sqlite" in str(error.value)
    with pytest.raises(StoreError, match="dtype 'O'"):
        run.instances(columns=["label"])
    assert run.instances(columns=["instance_id"]).instance_id.tolist() == [1, 2, 3]  # the rest still reads


def test_a_store_written_as_sql_rows_still_reads(tmp_path):
    """Runs recorded before chunks (schema 1) hold their rows in the `instances` table."""
    writer = _writer(tmp_path)
    writer.conn.executemany("INSERT INTO instances(split, epoch, step, instance_id, label, weight) "
                            "VALUES (?, ?, ?, ?, ?, ?)", [("train", 0, 0, i, i % 7, i / 2) for i in range(4)])
    writer.log_instances(_rows([10, 11], epoch=1))  # a resumed old run appends chunks
    assert writer.epoch_counts(0)["train"] == 4 and writer.epoch_counts(1)["train"] == 2
    writer.close()
    run = open_run(tmp_path / "r")
    assert run.instances(columns=["instance_id"]).instance_id.tolist() == [0, 1, 2, 3, 10, 11]
    assert run.instances(instance_ids=[2, 11], columns=["epoch", "instance_id"]).values.tolist() == [[0, 2], [1, 11]]
    assert run.instances(limit=5).instance_id.tolist() == [0, 1, 2, 3, 10]
    assert run.count_instances("train") == 6 and run.instance_epochs() == [0, 1]
