"""The run database's tables. One SQLite file per run, in WAL mode so the dashboard reads while
the trainer writes."""
from __future__ import annotations

import contextlib
import itertools
import re
import sqlite3
from pathlib import Path

DB_NAME = "store.sqlite"
SCHEMA_VERSION = 2  # 2: per-instance rows stored by column (kd_engine.store.chunks)

# Per-instance columns every run has; methods add their own REAL columns on demand. The rows
# themselves are stored by column (`kd_engine.store.chunks`); the `instances` table names the
# run's columns, and holds the rows of stores written before (schema 1).
CORE_INSTANCE_COLUMNS = {
    "epoch": "INTEGER",
    "step": "INTEGER",
    "split": "TEXT",
    "instance_id": "INTEGER",
    "label": "INTEGER",
    "teacher_loss": "REAL",
    "student_loss": "REAL",
    "distill_loss": "REAL",
    "weight": "REAL",
    "teacher_pred": "INTEGER",
    "teacher_conf": "REAL",
    "student_pred": "INTEGER",
    "student_conf": "REAL",
}

# The columns a scalar row is written with (its id is the rowid, which orders a live refresh).
SCALAR_COLUMNS = ("step", "epoch", "key", "value", "wall")

# At most this many bound parameters per INSERT: SQLite's default limit since 3.32 (2020). The
# connection's own limit is read where Python can (3.11+), else 999, the default of older SQLite.
MAX_PARAMETERS = 32766

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

DDL = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS scalars (
    id INTEGER PRIMARY KEY, step INTEGER NOT NULL, epoch INTEGER NOT NULL,
    key TEXT NOT NULL, value REAL, wall REAL NOT NULL);
CREATE INDEX IF NOT EXISTS scalars_key ON scalars(key, step);
CREATE TABLE IF NOT EXISTS instances (
    {", ".join(f"{name} {kind}" for name, kind in CORE_INSTANCE_COLUMNS.items())});
CREATE INDEX IF NOT EXISTS instances_epoch ON instances(split, epoch);
CREATE INDEX IF NOT EXISTS instances_id ON instances(instance_id);
CREATE TABLE IF NOT EXISTS instance_chunks (
    id INTEGER PRIMARY KEY, split TEXT, epoch INTEGER, rows INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS instance_chunks_epoch ON instance_chunks(split, epoch);
CREATE TABLE IF NOT EXISTS instance_values (
    chunk INTEGER NOT NULL, name TEXT NOT NULL, dtype TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (chunk, name));
CREATE TABLE IF NOT EXISTS features (
    epoch INTEGER NOT NULL, student_layer TEXT NOT NULL, teacher_layer TEXT NOT NULL,
    metric TEXT NOT NULL, value REAL);
CREATE TABLE IF NOT EXISTS artifacts (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, epoch INTEGER,
    instance_id INTEGER, role TEXT, path TEXT NOT NULL, shape TEXT, dtype TEXT, meta TEXT);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, wall REAL NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL);
"""


def check_identifier(name: str) -> str:
    """Column names come from method code, never from users, but check them anyway."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"invalid per-instance column name {name!r}")
    return name


def connect_rw(run_dir: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(run_dir / DB_NAME, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(DDL)
    return conn


def insert_rows(conn: sqlite3.Connection, table: str, columns: list[str], rows, count: int) -> None:
    """Insert ``count`` rows (tuples in ``columns``' order) with a few multi-row INSERTs, inside
    the caller's transaction. Why not ``executemany``: the sqlite3 module releases the GIL around
    every statement it runs, so one statement per row meant hundreds of hand-overs a step between
    this thread and the training thread, which then waited for the GIL at its own torch calls."""
    if not count:
        return
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) if hasattr(conn, "getlimit") else 999
    per_statement = max(1, min(MAX_PARAMETERS, limit) // max(1, len(columns)))
    quoted = ", ".join(f'"{check_identifier(name)}"' for name in columns)
    marks = "(" + ", ".join("?" for _ in columns) + ")"
    rows = iter(rows)
    for start in range(0, count, per_statement):
        part = list(itertools.islice(rows, per_statement))
        if not part:
            break
        conn.execute(f"INSERT INTO {table}({quoted}) VALUES {', '.join([marks] * len(part))}",
                     list(itertools.chain.from_iterable(part)))


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection):
    """One explicit transaction. The store's connections are in autocommit mode
    (isolation_level=None), where `with conn:` opens none, so each statement would commit (and
    WAL-write) on its own. SQLite may already have rolled back a transaction that failed (a full
    disk): roll back only an open one, so the original error is the one reported."""
    conn.execute("BEGIN")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
