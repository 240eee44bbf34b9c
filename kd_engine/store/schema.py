"""The run database's tables. One SQLite file per run, in WAL mode so the dashboard reads while
the trainer writes."""
from __future__ import annotations

import re
import sqlite3
from pathlib import Path

DB_NAME = "store.sqlite"
SCHEMA_VERSION = 1

# Per-instance columns every run has; methods add their own REAL columns on demand.
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
