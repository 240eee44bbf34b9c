"""Per-instance rows and scalars written on a background thread, so that recording overlaps training.

Why: a training epoch records one row per instance (its losses, weight, predictions) and a few
scalars per step. Writing them on the training thread costs a few per cent of the step time on
a small model. A writer thread with its own connection does that work on another core while the
training thread goes on with the next batches (the trainer queues the rows in chunks during the
epoch, and its scalars at each flush). The rows are stored by column (`kd_engine.store.chunks`),
so the writer thread holds the GIL only briefly: a chunk of 512 rows is a few inserts of raw
arrays, during which SQLite releases the GIL.

Guarantees kept from the synchronous writer:

* every instance and scalar insert goes through this one thread and connection (the training
  rows queued during an epoch, and the evaluation rows, which wait for their own write), so
  inserts keep their order and the table's columns are added by one connection only;
* `drain()` returns only when everything queued is committed, and raises the first error a write
  met (a full disk is the same one-line `DiskFullError`) in the caller's thread. The trainer
  drains at the end of each epoch, before the epoch's records are counted for its checkpoint,
  so a checkpoint never counts rows that are not committed;
* a crash mid-epoch leaves committed chunks of an epoch the checkpoint does not count; a resume
  deletes the rows of the epochs it redoes (`RunWriter.truncate_from_epoch`), so each is recorded
  once.
"""
from __future__ import annotations

import queue
import sqlite3
import threading
from typing import Any, Callable, Mapping

import numpy as np

from kd_engine.faults import fault_point
import kd_engine.store.chunks as chunks
from kd_engine.store.schema import SCALAR_COLUMNS, check_identifier, insert_rows, transaction

_STOP = object()


class RowSink:
    """One writer thread for the ``instances``, ``scalars`` and ``meta`` tables' frequent writes.
    ``connect`` opens its connection (called in the thread); ``guard(needed)`` is the owner's
    context manager that turns a full disk into one error line."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], guard: Callable[[int], Any]):
        self._connect, self._guard = connect, guard
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    # -- the caller's side ----------------------------------------------------------------------
    def put(self, columns: Mapping[str, np.ndarray] | Callable[[], Mapping[str, np.ndarray]]) -> None:
        """Queue per-instance rows (equal-length columns); they are committed in order, in one
        transaction. ``columns`` may be a function that makes them: it is called on the writer
        thread, so turning a chunk of raw per-step tensors into columns overlaps training too (it
        must not touch anything the training thread changes afterwards)."""
        if not callable(columns):
            _check_lengths(columns)
            columns = dict(columns)
        self._enqueue("instances", columns)

    def put_scalars(self, rows: list[tuple] | Callable[[], list[tuple]]) -> None:
        """Queue scalar rows ``(step, epoch, key, value, wall)``, or a function that makes them
        on the writer thread."""
        self._enqueue("scalars", rows)

    def put_meta(self, rows: list[tuple[str, str]]) -> None:
        """Queue metadata rows ``(key, json value)`` (a heartbeat), replacing the keys' values."""
        self._enqueue("meta", rows)

    def _enqueue(self, table: str, payload) -> None:
        self._raise()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="kdw-row-sink", daemon=True)
            self._thread.start()
        self._queue.put((table, payload))

    def drain(self) -> None:
        """Wait for every queued write; raise the first error one met (then forget it)."""
        if self._thread is not None:
            self._queue.join()
        self._raise()

    def close(self) -> None:
        """Drain, then end the thread and its connection. Raises what `drain` raises, after the
        thread has ended."""
        try:
            self.drain()
        finally:
            if self._thread is not None:
                self._queue.put(_STOP)
                self._thread.join()
                self._thread = None

    def _raise(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    # -- the writer thread ------------------------------------------------------------------------
    def _work(self) -> None:
        conn, known = None, set()
        try:
            while True:
                item = self._queue.get()
                try:
                    if item is _STOP:
                        return
                    if self._error is not None:  # after a failure nothing more is written
                        continue
                    table, item = item
                    if callable(item):  # made here, off the training thread
                        item = item()
                        if not item:
                            continue
                        if table == "instances":
                            _check_lengths(item)
                    if conn is None:
                        conn = self._connect()
                        known = {row[1] for row in conn.execute("PRAGMA table_info(instances)")}
                    if table == "instances":
                        _insert(conn, known, item, self._guard)
                    else:
                        with self._guard(len(item) * 96), transaction(conn):
                            _WRITE[table](conn, item)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                    self._error = exc
                finally:
                    self._queue.task_done()
        finally:
            if conn is not None:
                conn.close()


def _check_lengths(columns: Mapping[str, np.ndarray]) -> None:
    lengths = {len(values) for values in columns.values()}
    if len(lengths) != 1:
        raise ValueError(f"per-instance columns have different lengths: {sorted(lengths)}")


def _insert(conn: sqlite3.Connection, known: set[str], columns: Mapping[str, np.ndarray], guard) -> None:
    """One transaction of column chunks; a column new to the run is added to the `instances`
    table first (the run's list of per-instance columns)."""
    for name in columns:
        if name not in known:
            check_identifier(name)
            conn.execute(f'ALTER TABLE instances ADD COLUMN "{name}" REAL')
            known.add(name)
    encoded = chunks.encode(columns)
    with guard(chunks.nbytes(encoded)), transaction(conn):
        chunks.write(conn, encoded)
        fault_point("instances_txn")
    fault_point("instances_commit")


_WRITE = {  # the small tables' rows, one transaction per queued batch
    "scalars": lambda conn, rows: insert_rows(conn, "scalars", list(SCALAR_COLUMNS), rows, len(rows)),
    "meta": lambda conn, rows: conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", rows),
}


