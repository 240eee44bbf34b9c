"""The trainer's side of the run store. Only the trainer (rank 0) writes a run."""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from kd_engine.errors import ConfigError, KDWError
import kd_engine.store.chunks as chunks
from kd_engine.store.lock import RunLock, owner_record
from kd_engine.store.sink import RowSink
from kd_engine.store.space import MB, disk_full_error
from kd_engine.store.tb_mirror import TensorBoardMirror
from kd_engine.store.schema import DB_NAME, SCHEMA_VERSION, connect_rw, transaction

# A run id is a directory name under the runs directory, never a path: no separators, no
# leading dot (so neither "." nor ".."), nothing a shell or a URL would need to quote.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RESERVE_NAME = ".space_reserve"
RESERVE_BYTES = MB // 4  # freed on a full disk, so the run can still record that it failed


class RunExistsError(KDWError, FileExistsError):
    """A new run was given the id of a run that already exists."""


def run_exists_message(run_dir: Path) -> str:
    return (f"{run_dir}: a run with this id already exists (resume it with `kdw train --resume "
            f"{run_dir.name}`, or choose another --run-id)")


def check_run_id(run_id: str, field: str = "run id") -> str:
    """Refuse a run id that is not a plain directory name (path traversal, absolute paths)."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id):
        raise ConfigError(f"{field}: {run_id!r} is not a valid run id (letters, digits, '.', '_' and "
                          "'-', starting with a letter or digit, at most 128 characters)")
    return run_id


def new_run_id(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:96]
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}-{secrets.token_hex(2)}"


class RunWriter:
    """Buffered writes to one run directory: metadata, scalars, instances, features, artifacts.

    A writer holds the run's exclusive writer lock (`kd_engine.store.lock`) from construction to
    `close()` or the process's death, so two trainers can never write one run. It also keeps a
    small reserve file that it deletes when the disk fills, so that the failure can be recorded.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, initial_meta: Mapping[str, Any] | None = None,
                 lock: RunLock | None = None):
        """`initial_meta` is written in the first transaction after the schema, so a reader (the
        dashboard) meets a new store without its status only in that instant ("starting")."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = lock or RunLock.acquire(self.run_dir)
        self.conn = None
        try:
            self._make_reserve()
            (self.run_dir / "artifacts").mkdir(exist_ok=True)
            with self._disk():
                self.conn = connect_rw(self.run_dir)
            # every instance and scalar insert goes through one writer thread with its own connection
            self._sink = RowSink(lambda: connect_rw(self.run_dir), self._disk)
            self._scalar_buffer: list[tuple] = []
            self._tensorboard, self._tb = tensorboard, None  # the mirror starts at the first flush
            if initial_meta:
                self.set_meta(**initial_meta)
        except BaseException:
            if self.conn is not None:
                self.conn.close()
            self._lock.release()
            raise

    @property
    def db_path(self) -> Path:
        return self.run_dir / DB_NAME

    # -- a full disk --------------------------------------------------------------------------
    def _make_reserve(self) -> None:
        path = self.run_dir / RESERVE_NAME
        if path.is_file():
            return
        try:
            with open(path, "wb") as handle:
                handle.write(b"\0" * RESERVE_BYTES)
        except OSError:  # already too full for it: a later write reports the full disk
            path.unlink(missing_ok=True)

    def _release_reserve(self) -> bool:
        path = self.run_dir / RESERVE_NAME
        if not path.is_file():
            return False
        path.unlink(missing_ok=True)
        return True

    @contextlib.contextmanager
    def _disk(self, needed: int | None = None, path: Path | None = None):
        """Turn a full disk into one `DiskFullError` line naming the path and the space needed,
        after freeing the reserve so the status can still say `failed`."""
        try:
            yield
        except (OSError, sqlite3.Error, RuntimeError) as exc:
            error = disk_full_error(exc, path or self.db_path, needed)
            if error is exc:
                raise
            self._release_reserve()
            raise error from None

    def _transaction(self):
        return transaction(self.conn)

    # -- metadata -----------------------------------------------------------------------------
    @classmethod
    def create(cls, runs_dir: str | Path, name: str, meta: Mapping[str, Any], config_yaml: str,
               run_id: str | None = None, tensorboard: bool = True) -> "RunWriter":
        run_id = check_run_id(run_id or new_run_id(name))
        run_dir = Path(runs_dir) / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock.acquire(run_dir)  # two `--run-id X` at once: the second stops here
        try:
            if (run_dir / DB_NAME).exists():
                raise RunExistsError(run_exists_message(run_dir))
            with contextlib.suppress(OSError):
                (run_dir / "config.yaml").write_text(config_yaml)
            now = time.time()
            return cls(run_dir, tensorboard=tensorboard, lock=lock, initial_meta=dict(
                run_id=run_id, name=name, created=now, config=config_yaml, schema_version=SCHEMA_VERSION,
                host=socket.gethostname(), **meta, **_status_fields("running")))
        except BaseException:
            lock.release()
            raise

    def set_meta(self, **items: Any) -> None:
        """Metadata (the status among it) is what a failed run must still record on a full disk:
        after the reserve is freed the write is tried once more."""
        rows = [(key, json.dumps(value)) for key, value in items.items()]
        needed = sum(len(k) + len(v) for k, v in rows) + 64 * 1024

        def write():
            with self._disk(needed), self._transaction():
                self.conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", rows)
        try:
            write()
        except KDWError:
            if not self._release_reserve():
                raise
            write()

    def heartbeat(self, wait: bool = True) -> None:
        """Say the run is alive. Without ``wait`` it goes through the writer thread like the
        scalars (the trainer's flushes during an epoch), so the step never waits on SQLite's
        write lock for it."""
        items = {"heartbeat": time.time(), "pid": os.getpid()}
        if wait:
            self.set_meta(**items)
        else:
            self._sink.put_meta([(key, json.dumps(value)) for key, value in items.items()])

    def set_status(self, status: str, error: str | None = None) -> None:
        self.set_meta(**_status_fields(status, error))

    def event(self, message: str, level: str = "info") -> None:
        with self._disk():
            self.conn.execute("INSERT INTO events(wall, level, message) VALUES (?, ?, ?)",
                              (time.time(), level, message))

    # -- scalars ------------------------------------------------------------------------------
    def log_scalars(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        wall = time.time()
        for key, value in values.items():
            self._scalar_buffer.append((step, epoch, key, float(value), wall))

    def queue_scalars(self, epoch: int, first_step: int,
                      make: Callable[[], Iterable[tuple[int, Mapping[str, float]]]]) -> None:
        """Scalars of some steps, made on the writer thread: ``make()`` returns ``(step, {key:
        value})`` pairs (the trainer's kept per-step tensors, stacked there, so the training
        thread neither stacks nor copies them; on CUDA the copy's wait is the writer thread's).
        They keep their order with everything queued before; `drain` waits for them."""
        self.flush(wait=False)  # scalars logged before these go first
        self._start_mirror(first_step)
        wall = time.time()
        self._sink.put_scalars(lambda: [(step, epoch, key, float(value), wall)
                                        for step, values in make() for key, value in values.items()])

    def flush(self, wait: bool = True) -> None:
        """Hand the buffered scalars to the writer thread; with ``wait``, return once they (and
        everything queued before them) are committed. The trainer does not wait during an epoch:
        it waits at the epoch's end, before the checkpoint counts the epoch's records."""
        if self._scalar_buffer:
            self._start_mirror(min(row[0] for row in self._scalar_buffer))
            rows, self._scalar_buffer = self._scalar_buffer, []
            self._sink.put_scalars(rows)
        if wait:
            self.drain()

    def _start_mirror(self, first_step: int) -> None:
        """Start the TensorBoard mirror at the first scalars: it mirrors what comes after the
        committed rows, so nothing may be in flight; `first_step` is a resumed run's purge step."""
        if self._tensorboard and self._tb is None:
            self.drain()
            since = self.conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM scalars").fetchone()[0]
            self._tb = TensorBoardMirror.start(self.run_dir, since, first_step if since else None)

    # -- instances ----------------------------------------------------------------------------
    def log_instances(self, columns: Mapping[str, np.ndarray]) -> int:
        """Append per-instance rows and wait until they are committed (with everything queued
        before them); columns unknown to the table are added as REAL columns."""
        self._sink.put(columns)
        self.drain()
        return len(next(iter(columns.values()))) if columns else 0

    def queue_instances(self, columns) -> None:
        """Append per-instance rows on the writer thread without waiting (training rows during an
        epoch); `columns` is a mapping, or a function that returns one on the writer thread.
        `drain` waits for them and raises what a write met."""
        self._sink.put(columns)

    def drain(self) -> None:
        """Wait until everything queued to the writer thread (rows, scalars, heartbeats) is
        committed; raise, once, the first error a write met."""
        self._sink.drain()

    def log_features(self, epoch: int, rows: list[tuple[str, str, str, float]]) -> None:
        """rows: (student_layer, teacher_layer, metric, value)."""
        with self._disk(len(rows) * 128), self._transaction():
            self.conn.executemany(
                "INSERT INTO features(epoch, student_layer, teacher_layer, metric, value) "
                "VALUES (?, ?, ?, ?, ?)", [(epoch, *row) for row in rows])

    # -- artifacts ----------------------------------------------------------------------------
    def save_artifact(self, name: str, array: np.ndarray, kind: str, epoch: int | None = None,
                      instance_id: int | None = None, role: str | None = None,
                      meta: Mapping[str, Any] | None = None, dtype: str = "float16") -> Path:
        """Store a tensor as an .npy file (float16 by default) and list it in the database."""
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        path = self.run_dir / "artifacts" / f"{safe}.npy"
        data = np.asarray(array).astype(dtype)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        try:
            with self._disk(data.nbytes + 1024, path):
                np.save(tmp, data, allow_pickle=False)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)
        with self._disk(), self._transaction():
            self.conn.execute(
                "INSERT OR REPLACE INTO artifacts(name, kind, epoch, instance_id, role, path, shape,"
                " dtype, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, kind, epoch, instance_id, role, str(path.relative_to(self.run_dir)),
                 json.dumps(list(data.shape)), dtype, json.dumps(dict(meta or {}))))
        return path

    def save_images(self, ids: np.ndarray, images: np.ndarray) -> None:
        """The instance image bank the dashboard's galleries read (float16 in [0, 1])."""
        self.save_artifact("instance_images", images, kind="images")
        self.save_artifact("instance_image_ids", np.asarray(ids), kind="images", dtype="int64")

    # -- resume -------------------------------------------------------------------------------
    @classmethod
    def reopen(cls, run_dir: str | Path, tensorboard: bool = True) -> "RunWriter":
        """The writer of an existing run (a resume): the lock first, then a store that must still
        be a run database with its metadata. An emptied or damaged store is one `StoreError`
        line instead of a fresh store silently written over the lost records."""
        from kd_engine.store.reader import StoreError

        run_dir = Path(run_dir)
        db = run_dir / DB_NAME
        lock = RunLock.acquire(run_dir)
        try:
            if not db.is_file() or db.stat().st_size == 0:
                raise StoreError(f"{db}: the run database is missing or empty; its records are lost, "
                                 "so the run cannot be resumed")
            try:
                writer = cls(run_dir, tensorboard=tensorboard, lock=lock)
                found = writer.conn.execute("SELECT COUNT(*) FROM meta WHERE key = 'run_id'").fetchone()[0]
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{db}: unreadable run database ({exc}); the run cannot be resumed") from None
        except BaseException:
            lock.release()
            raise
        if not found:
            writer.close()
            raise StoreError(f"{db}: the run database has lost its metadata; the run cannot be resumed")
        return writer

    def stored_status(self) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'status'").fetchone()
        try:
            return json.loads(row[0]) if row else None
        except ValueError:
            return None

    def epoch_counts(self, epoch: int) -> dict[str, int]:
        """What the store holds for one epoch; a checkpoint keeps these counts so that a resume
        can tell whether the store still has every epoch the checkpoint says is done."""
        self.drain()
        one = lambda sql: int(self.conn.execute(sql, (epoch,)).fetchone()[0])  # noqa: E731
        rows = lambda split: chunks.count(self.conn, split, epoch) + int(self.conn.execute(  # noqa: E731
            "SELECT COUNT(*) FROM instances WHERE split = ? AND epoch = ?", (split, epoch)).fetchone()[0])  # schema 1
        return {"train": rows("train"), "val": rows("val"),
                # the final evaluation's test scalars are redone by a resume: not counted
                "scalars": one("SELECT COUNT(*) FROM scalars WHERE epoch = ? AND key NOT LIKE 'test/%'"),
                "features": one("SELECT COUNT(*) FROM features WHERE epoch = ?")}

    def verify_records(self, expected: Mapping[int, Mapping[str, int]], done_epochs: int) -> None:
        """Refuse (one `StoreError` line) a store that lost records of an epoch the checkpoint
        counts as done: a truncated WAL, a restored older copy. `expected` holds the counts the
        checkpoints recorded; without them (older checkpoints) every done epoch must at least
        have scalars."""
        from kd_engine.store.reader import StoreError

        for epoch in range(done_epochs):
            want = expected.get(epoch)
            have = self.epoch_counts(epoch)
            if want is None:
                if not expected and have["scalars"] == 0:
                    lost = "its scalars"
                else:
                    continue
            else:
                short = [f"{have[k]} of {n} {k} rows" for k, n in want.items() if have.get(k) != n]
                if not short:
                    continue
                lost = ", ".join(short)
            raise StoreError(f"{self.db_path}: the store lost records the checkpoint counts as committed "
                             f"(epoch {epoch}: {lost}); the run is not resumed over the gap")

    def truncate_final(self, epoch: int) -> None:
        """Drop what an interrupted final evaluation wrote (test rows and test scalars), so that
        finishing again records it once."""
        self.drain()
        with self._disk(), self._transaction():
            self.conn.execute("DELETE FROM instances WHERE split = 'test' AND epoch = ?", (epoch,))
            chunks.delete(self.conn, "split = 'test' AND epoch = ?", (epoch,))
            self.conn.execute("DELETE FROM scalars WHERE epoch = ? AND key LIKE 'test/%'", (epoch,))

    def truncate_from_epoch(self, epoch: int) -> None:
        """Drop what a killed run wrote for epochs it must redo, so each epoch is recorded once."""
        self.drain()
        with self._disk(), self._transaction():
            self.conn.execute("DELETE FROM scalars WHERE epoch >= ?", (epoch,))
            self.conn.execute("DELETE FROM instances WHERE epoch >= ?", (epoch,))
            chunks.delete(self.conn, "epoch >= ?", (epoch,))
            self.conn.execute("DELETE FROM features WHERE epoch >= ?", (epoch,))
            self.conn.execute("DELETE FROM artifacts WHERE epoch >= ?", (epoch,))

    def close(self) -> None:
        """Flush, stop the mirror, and give up the writer lock. Rows that a full disk refused are
        dropped: their epoch is not checkpointed, so a resume records it again."""
        try:
            try:
                try:
                    self.flush(wait=False)
                finally:
                    self._sink.close()
            except KDWError:
                self._scalar_buffer.clear()
                raise
            finally:
                if self._tb is not None:
                    self._tb.stop()
                    self._tb = None
                self.conn.close()
        finally:
            self._release_reserve()  # only a writing run needs it
            self._lock.release()


def _status_fields(status: str, error: str | None = None) -> dict[str, Any]:
    now = time.time()
    owner = owner_record()
    return {"status": status, "error": error, "updated": now, "pid": owner["pid"], "heartbeat": now,
            "pid_start": owner["start_time"]}


def checkpoint_note(run_dir: str | Path | None) -> str:
    """The end of a failure message: what the run can be resumed from, said only when true."""
    state = Path(run_dir) / "checkpoints" / "state.pt" if run_dir is not None else None
    if state is not None and state.is_file():
        return "the last good checkpoint is kept (resume with `kdw train --resume`)"
    return "nothing was saved: the run failed before its first checkpoint, so it cannot be resumed"
