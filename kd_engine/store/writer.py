"""The trainer's side of the run store. Only the trainer (rank 0) writes a run."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kd_engine.store.tb_mirror import TensorBoardMirror
from kd_engine.store.schema import CORE_INSTANCE_COLUMNS, SCHEMA_VERSION, check_identifier, connect_rw


def new_run_id(name: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{secrets.token_hex(2)}"


class RunWriter:
    """Buffered writes to one run directory: metadata, scalars, instances, features, artifacts."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, initial_meta: Mapping[str, Any] | None = None):
        """`initial_meta` is written in the first transaction after the schema, so a reader (the
        dashboard) meets a new store without its status only in that instant ("starting")."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "artifacts").mkdir(exist_ok=True)
        self.conn = connect_rw(self.run_dir)
        self._instance_columns = {row[1] for row in self.conn.execute("PRAGMA table_info(instances)")}
        self._scalar_buffer: list[tuple] = []
        if initial_meta:
            self.set_meta(**initial_meta)
        self._tensorboard, self._tb = tensorboard, None  # the mirror process starts at the first flush

    @contextlib.contextmanager
    def _transaction(self):
        """One explicit transaction. The connection is in autocommit mode (isolation_level=None),
        where `with conn:` opens none, so an executemany would commit (and WAL-write) every row."""
        self.conn.execute("BEGIN")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- metadata -----------------------------------------------------------------------------
    @classmethod
    def create(cls, runs_dir: str | Path, name: str, meta: Mapping[str, Any], config_yaml: str,
               run_id: str | None = None, tensorboard: bool = True) -> "RunWriter":
        run_id = run_id or new_run_id(name)
        run_dir = Path(runs_dir) / run_id
        if (run_dir / "store.sqlite").exists():
            raise FileExistsError(f"{run_dir}: a run with this id already exists")
        now = time.time()
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config_yaml)
        return cls(run_dir, tensorboard=tensorboard, initial_meta=dict(
            run_id=run_id, name=name, created=now, config=config_yaml, schema_version=SCHEMA_VERSION,
            host=socket.gethostname(), **meta, **_status_fields("running")))

    def set_meta(self, **items: Any) -> None:
        rows = [(key, json.dumps(value)) for key, value in items.items()]
        with self._transaction():
            self.conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", rows)

    def heartbeat(self) -> None:
        self.set_meta(heartbeat=time.time(), pid=os.getpid())

    def set_status(self, status: str, error: str | None = None) -> None:
        self.set_meta(**_status_fields(status, error))

    def event(self, message: str, level: str = "info") -> None:
        self.conn.execute("INSERT INTO events(wall, level, message) VALUES (?, ?, ?)",
                          (time.time(), level, message))

    # -- scalars ------------------------------------------------------------------------------
    def log_scalars(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        wall = time.time()
        for key, value in values.items():
            self._scalar_buffer.append((step, epoch, key, float(value), wall))

    def flush(self) -> None:
        if self._tensorboard and self._tb is None and self._scalar_buffer:
            since = self.conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM scalars").fetchone()[0]
            purge = min(row[0] for row in self._scalar_buffer) if since else None  # a resumed run
            self._tb = TensorBoardMirror.start(self.run_dir, since, purge)
        if self._scalar_buffer:
            with self._transaction():
                self.conn.executemany(
                    "INSERT INTO scalars(step, epoch, key, value, wall) VALUES (?, ?, ?, ?, ?)",
                    self._scalar_buffer)
            self._scalar_buffer.clear()

    # -- instances ----------------------------------------------------------------------------
    def log_instances(self, columns: Mapping[str, np.ndarray]) -> int:
        """Append per-instance rows; columns unknown to the table are added as REAL columns."""
        names = list(columns)
        for name in names:
            if name not in self._instance_columns:
                check_identifier(name)
                self.conn.execute(f'ALTER TABLE instances ADD COLUMN "{name}" REAL')
                self._instance_columns.add(name)
        lengths = {len(np.asarray(values)) for values in columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"per-instance columns have different lengths: {sorted(lengths)}")
        arrays = [_to_python(np.asarray(columns[name]), CORE_INSTANCE_COLUMNS.get(name, "REAL"))
                  for name in names]
        quoted = ", ".join(f'"{name}"' for name in names)
        marks = ", ".join("?" for _ in names)
        with self._transaction():
            self.conn.executemany(f"INSERT INTO instances({quoted}) VALUES ({marks})", zip(*arrays))
        return lengths.pop()

    def log_features(self, epoch: int, rows: list[tuple[str, str, str, float]]) -> None:
        """rows: (student_layer, teacher_layer, metric, value)."""
        with self._transaction():
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
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, data, allow_pickle=False)
        os.replace(tmp, path)
        with self._transaction():
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
    def truncate_from_epoch(self, epoch: int) -> None:
        """Drop what a killed run wrote for epochs it must redo, so each epoch is recorded once."""
        with self._transaction():
            self.conn.execute("DELETE FROM scalars WHERE epoch >= ?", (epoch,))
            self.conn.execute("DELETE FROM instances WHERE epoch >= ?", (epoch,))
            self.conn.execute("DELETE FROM features WHERE epoch >= ?", (epoch,))
            self.conn.execute("DELETE FROM artifacts WHERE epoch >= ?", (epoch,))

    def close(self) -> None:
        self.flush()
        if self._tb is not None:
            self._tb.stop()
            self._tb = None
        self.conn.close()


def _status_fields(status: str, error: str | None = None) -> dict[str, Any]:
    now = time.time()
    return {"status": status, "error": error, "updated": now, "pid": os.getpid(), "heartbeat": now}


def _to_python(values: np.ndarray, kind: str) -> list:
    if kind == "TEXT":
        return [str(v) for v in values.tolist()]
    if kind == "INTEGER":
        return values.astype(np.int64).tolist()
    return values.astype(np.float64).tolist()
