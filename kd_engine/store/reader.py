"""The public read API of the run store: the dashboard and notebooks use only this.

Reads never block the trainer: connections are read-only, in WAL mode, with a short timeout,
and a broken or locked database becomes a `StoreError` with a one-line message.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from kd_engine.errors import KDWError
import kd_engine.store.chunks as chunks
from kd_engine.store.lock import is_locked
from kd_engine.store.schema import DB_NAME

STALE_AFTER_S = 60.0
FUTURE_SLACK_S = 300.0  # clocks of two machines sharing a runs directory may differ a little


class StoreError(KDWError):
    """A run database is missing, corrupted or locked."""


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Run:
    """One recorded run. Cheap to create; every query opens a short read-only connection."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.db_path = self.run_dir / DB_NAME
        if not self.db_path.is_file():
            raise StoreError(f"{self.run_dir}: not a run directory (no {DB_NAME})")
        self._meta: dict[str, Any] | None = None

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    @contextlib.contextmanager
    def _connection(self):
        """A short read-only connection; SQLite's errors become one `StoreError` line."""
        try:
            conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=2.0, isolation_level=None)
            try:
                yield conn
            finally:
                conn.close()
        except (sqlite3.DatabaseError, pd.errors.DatabaseError, chunks.ChunkError) as exc:
            text = str(exc)
            if "locked" in text:
                raise StoreError(f"{self.db_path}: database is locked; try again shortly") from None
            raise StoreError(f"{self.db_path}: unreadable run database ({text})") from None

    def _query(self, sql: str, params: Iterable[Any] = ()) -> pd.DataFrame:
        with self._connection() as conn:
            return pd.read_sql_query(sql, conn, params=list(params))

    # -- metadata -----------------------------------------------------------------------------
    def meta(self, refresh: bool = True) -> dict[str, Any]:
        """The run's metadata; a value that does not parse is a one-line `StoreError`, so one
        damaged run never takes a listing of the others down with it."""
        if self._meta is None or refresh:
            frame = self._query("SELECT key, value FROM meta")
            meta = {}
            for key, value in zip(frame.key, frame.value):
                try:
                    meta[key] = json.loads(value)
                except (TypeError, ValueError):
                    raise StoreError(f"{self.db_path}: metadata {key!r} is not valid JSON "
                                     f"({str(value)[:40]!r})") from None
            for key in ("heartbeat", "created", "updated"):
                if meta.get(key) is not None and not _is_number(meta[key]):
                    raise StoreError(f"{self.db_path}: metadata {key!r} is not a number "
                                     f"({str(meta[key])[:40]!r})")
            if not isinstance(meta.get("status", ""), str):
                raise StoreError(f"{self.db_path}: metadata 'status' is not a text ({meta['status']!r:.40})")
            if not isinstance(meta.get("final_metrics") or {}, dict):
                raise StoreError(f"{self.db_path}: metadata 'final_metrics' is not a mapping")
            self._meta = meta
        return self._meta

    def status(self) -> str:
        """running / finished / failed / stopped / starting (a new store without its metadata
        yet), or, for a run whose stored status says running:

        - ``stale``: no process holds the run's writer lock (killed, or its machine is gone);
          only then may it be resumed;
        - ``not responding``: a live trainer holds the lock but its heartbeat is older than
          STALE_AFTER_S (paused, swapping) or lies in the future (a wrong clock or a crafted
          store); it is still the run's writer, so it is never offered for resuming.
        """
        meta = self.meta()
        status = meta.get("status", "starting")
        if status != "running":
            return status
        locked = is_locked(self.run_dir)
        if locked is None:  # no OS file locks here: fall back to the heartbeat and the pid
            age = time.time() - float(meta.get("heartbeat") or 0)
            return "stale" if age > STALE_AFTER_S or not _pid_alive(meta.get("pid")) else "running"
        if not locked:
            return "stale"
        age = time.time() - float(meta.get("heartbeat") or 0)
        return "not responding" if age > STALE_AFTER_S or age < -FUTURE_SLACK_S else "running"

    def config(self) -> dict[str, Any]:
        from kd_engine.errors import ConfigError
        from kd_engine.yaml_load import safe_yaml

        try:
            value = safe_yaml(self.meta().get("config") or "{}", f"{self.db_path}: stored config")
        except ConfigError as exc:
            raise StoreError(str(exc)) from None
        if not isinstance(value or {}, dict):
            raise StoreError(f"{self.db_path}: stored config is not a mapping")
        return value or {}

    def final_metrics(self) -> dict[str, float]:
        return dict(self.meta().get("final_metrics") or {})

    def events(self) -> pd.DataFrame:
        return self._query("SELECT wall, level, message FROM events ORDER BY id")

    # -- scalars ------------------------------------------------------------------------------
    def scalars(self, since_rowid: int = 0, keys: list[str] | None = None) -> pd.DataFrame:
        """Long-format scalars (rowid, step, epoch, key, value, wall); pass the last rowid seen
        to read only new rows during a live refresh."""
        sql = "SELECT id AS rowid, step, epoch, key, value, wall FROM scalars WHERE id > ?"
        params: list[Any] = [since_rowid]
        if keys:
            sql += f" AND key IN ({', '.join('?' for _ in keys)})"
            params += list(keys)
        return self._query(sql + " ORDER BY id", params)

    def scalar_keys(self) -> list[str]:
        return self._query("SELECT DISTINCT key FROM scalars ORDER BY key").key.tolist()

    # -- instances ----------------------------------------------------------------------------
    def instance_columns(self) -> list[str]:
        return self._query("PRAGMA table_info(instances)").name.tolist()

    def instance_epochs(self, split: str = "train") -> list[int]:
        with self._connection() as conn:
            legacy = {int(e) for (e,) in conn.execute(
                "SELECT DISTINCT epoch FROM instances WHERE split = ? AND epoch IS NOT NULL", [split])}
            return sorted(legacy | chunks.epochs(conn, split))

    def instances(self, split: str | None = "train", epoch: int | None = None,
                  instance_ids: Iterable[int] | None = None, columns: list[str] | None = None,
                  limit: int | None = None) -> pd.DataFrame:
        """Per-instance rows in the order they were written. Rows are stored by column in chunks
        (`kd_engine.store.chunks`): a query reads only the columns it names, and a query by
        ``instance_ids`` scans the chunks' id columns (with numpy) rather than an index."""
        known = set(self.instance_columns())
        cols = [c for c in (columns or sorted(known)) if c in known]
        unknown = [c for c in (columns or []) if c not in known]
        if unknown:
            raise StoreError(f"{self.run_id}: no per-instance column {unknown[0]!r}")
        ids = None if instance_ids is None else [int(i) for i in instance_ids]
        limit = None if limit is None else int(limit)
        with self._connection() as conn:
            conn.execute("BEGIN")  # one snapshot for the chunks and their columns
            legacy = self._legacy_instances(conn, cols, split, epoch, ids, limit)
            if limit is not None:
                limit = max(0, limit - len(legacy))
            frame = pd.DataFrame(chunks.read(conn, cols, split, epoch, ids, limit), columns=cols)
        return pd.concat([legacy, frame], ignore_index=True) if len(legacy) else frame

    @staticmethod
    def _legacy_instances(conn, cols, split, epoch, ids, limit) -> pd.DataFrame:
        """Rows of a store written as SQL rows (schema 1); empty for newer stores."""
        if conn.execute("SELECT 1 FROM instances LIMIT 1").fetchone() is None:
            return pd.DataFrame(columns=cols)
        quoted = ", ".join(f'"{c}"' for c in cols)
        sql = f"SELECT {quoted} FROM instances WHERE 1=1"
        params: list[Any] = []
        if split is not None:
            sql += " AND split = ?"
            params.append(split)
        if epoch is not None:
            sql += " AND epoch = ?"
            params.append(int(epoch))
        if ids is not None:
            sql += f" AND instance_id IN ({', '.join('?' for _ in ids)})"
            params += ids
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return pd.read_sql_query(sql, conn, params=params)

    def count_instances(self, split: str | None = None) -> int:
        with self._connection() as conn:
            where = "" if split is None else " WHERE split = ?"
            legacy = conn.execute(f"SELECT COUNT(*) FROM instances{where}", [] if split is None else [split])
            return int(legacy.fetchone()[0]) + chunks.count(conn, split)

    # -- features and artifacts ---------------------------------------------------------------
    def features(self) -> pd.DataFrame:
        return self._query("SELECT epoch, student_layer, teacher_layer, metric, value FROM features "
                           "ORDER BY epoch")

    def artifacts(self, kind: str | None = None) -> pd.DataFrame:
        sql = "SELECT name, kind, epoch, instance_id, role, path, shape, dtype, meta FROM artifacts"
        if kind is not None:
            return self._query(sql + " WHERE kind = ? ORDER BY id", [kind])
        return self._query(sql + " ORDER BY id")

    def load_artifact(self, name: str) -> np.ndarray:
        frame = self._query("SELECT path FROM artifacts WHERE name = ?", [name])
        if frame.empty:
            raise StoreError(f"{self.run_id}: no artifact named {name!r}")
        path = self.run_dir / frame.path[0]
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}: unreadable artifact ({exc})") from None

    def images(self, instance_ids: Iterable[int]) -> dict[int, np.ndarray]:
        """Images of the given instances from the run's image bank (missing ids are skipped)."""
        try:
            bank = self.load_artifact("instance_images")
            ids = self.load_artifact("instance_image_ids")
        except StoreError:
            return {}
        position = {int(i): n for n, i in enumerate(ids.tolist())}
        return {int(i): bank[position[int(i)]].astype(np.float32)
                for i in instance_ids if int(i) in position}

    def checkpoint_path(self, which: str = "student") -> Path | None:
        path = self.run_dir / "checkpoints" / f"{which}.safetensors"
        return path if path.is_file() else None


def resolve_run(run: str | Path, runs_dir: str | Path = "runs") -> Path:
    """Accept a run directory, a run id, or a unique prefix of a run id."""
    path = Path(run)
    if (path / DB_NAME).is_file():
        return path
    base = Path(runs_dir)
    if (base / str(run) / DB_NAME).is_file():
        return base / str(run)
    matches = [p for p in base.glob("*") if p.name.startswith(str(run)) and (p / DB_NAME).is_file()]
    if not matches:
        matches = [p for p in base.glob("*") if str(run) in p.name and (p / DB_NAME).is_file()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise StoreError(f"run {str(run)!r}: not found under {base}")
    raise StoreError(f"run {str(run)!r}: ambiguous, matches {', '.join(sorted(p.name for p in matches))}")


def open_run(run: str | Path, runs_dir: str | Path = "runs") -> Run:
    return Run(resolve_run(run, runs_dir))


def newest_first(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """A listing (of runs, of searches): ``rows`` as a frame with at least ``columns`` (None where a
    row lacks one), newest ``created`` first; an empty listing still has the columns."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=columns)
    for column in columns:
        if column not in frame:
            frame[column] = None
    return frame.sort_values("created", ascending=False, na_position="last").reset_index(drop=True)


def list_runs(runs_dir: str | Path = "runs") -> pd.DataFrame:
    """One row per run, newest first. A corrupted run is listed with status 'corrupt'."""
    rows = []
    base = Path(runs_dir)
    for run_dir in sorted(base.glob("*/" + DB_NAME)):
        run_dir = run_dir.parent
        row: dict[str, Any] = {"run_id": run_dir.name, "path": str(run_dir)}
        try:
            run = Run(run_dir)
            meta = run.meta()
            row.update(status=run.status(), name=meta.get("name"), method=meta.get("method"),
                       dataset=meta.get("dataset"), teacher=meta.get("teacher"),
                       student=meta.get("student"), created=meta.get("created"),
                       error=meta.get("error"), warning=meta.get("warning"))
            for key, value in (meta.get("final_metrics") or {}).items():
                row[key] = value
        except StoreError as exc:
            row.update(status="corrupt", error=str(exc))
        rows.append(row)
    columns = ["run_id", "status", "name", "method", "dataset", "teacher", "student", "created",
               "error", "warning", "path"]
    frame = newest_first(rows, columns)
    return frame[columns + [c for c in frame.columns if c not in columns]]
