"""Per-instance rows stored by column: one chunk per write, one BLOB per column of the chunk.

Why: a training epoch records a row per instance (losses, weight, predictions, a method's own
columns) on the store's writer thread while the training thread goes on. Inserting them as SQL
rows made a Python object of every value and bound it into SQLite with the GIL held, several
milliseconds per chunk of 512 rows, during which the training thread could not run its own
Python between torch calls; the table's two indexes doubled the insert. Stored by column, a
write is a few inserts of raw little-endian arrays (numpy's bytes) whatever its length, and a
read decodes whole columns with numpy instead of building a Python object per value.

Tables (`kd_engine.store.schema.DDL`):

* ``instance_chunks(id, split, epoch, rows)``: one chunk holds rows of one split and epoch; its
  id orders the chunks, so rows read back in the order they were written;
* ``instance_values(chunk, name, dtype, data)``: one column of a chunk, ``dtype`` being numpy's
  (``<f4``, ``<f8``, ``<i4``, ``<i8``). A column a chunk lacks reads as missing (NaN).

Values keep what the row store kept: integer columns are exact (int32 when they fit), a float32
tensor's values are stored as float32 (SQLite held them as the same doubles), anything else as
float64. The ``instances`` table still names the run's per-instance columns (its schema) and
holds the rows of stores written before chunks (schema 1), which the reader still reads.
"""
from __future__ import annotations

import sqlite3
from typing import Iterable, Mapping

import numpy as np

from kd_engine.store.schema import CORE_INSTANCE_COLUMNS

DTYPES = {"<f4": np.dtype("<f4"), "<f8": np.dtype("<f8"), "<i4": np.dtype("<i4"), "<i8": np.dtype("<i8")}
PER_CHUNK = ("split", "epoch")  # kept once per chunk, not as a column
_IDS_PER_QUERY = 500  # chunk ids per `IN (...)`, far below SQLite's bound-parameter limit
_INT32 = np.iinfo(np.int32)


class ChunkError(ValueError):
    """A stored chunk does not decode (an unknown dtype, a column of the wrong length)."""


def encode(columns: Mapping[str, np.ndarray]) -> list[tuple[str | None, int | None, int, list[tuple[str, str, bytes]]]]:
    """Equal-length columns -> chunks ``(split, epoch, rows, [(name, dtype, bytes), ...])``, one
    per run of rows with the same split and epoch (in the rows' order)."""
    arrays = {name: np.asarray(values) for name, values in columns.items()}
    rows = len(next(iter(arrays.values()))) if arrays else 0
    if not rows:
        return []
    split = arrays.pop("split", None)
    epoch = arrays.pop("epoch", None)
    split = None if split is None else split.astype(str)
    epoch = None if epoch is None else epoch.astype(np.int64)
    stored = {name: _stored(name, values) for name, values in arrays.items()}
    chunks = []
    for start, stop in _runs(split, epoch, rows):
        chunks.append((None if split is None else str(split[start]), None if epoch is None else int(epoch[start]),
                       stop - start, [(name, values.dtype.str, values[start:stop].tobytes())
                                      for name, values in stored.items()]))
    return chunks


def _stored(name: str, values: np.ndarray) -> np.ndarray:
    if CORE_INSTANCE_COLUMNS.get(name, "REAL") == "INTEGER":
        values = values.astype(np.int64, copy=False)
        if values.size and _INT32.min <= values.min() and values.max() <= _INT32.max:
            values = values.astype(np.int32)
        return values.astype(values.dtype.newbyteorder("<"), copy=False)
    kind = "<f4" if values.dtype in (np.float16, np.float32, np.bool_) else "<f8"
    return values.astype(kind, copy=False)


def _runs(split: np.ndarray | None, epoch: np.ndarray | None, rows: int) -> list[tuple[int, int]]:
    """Where the (split, epoch) pair changes: almost always nowhere (one chunk)."""
    change = np.zeros(rows, dtype=bool)
    for key in (split, epoch):
        if key is not None and rows > 1:
            change[1:] |= key[1:] != key[:-1]
    starts = [0, *np.flatnonzero(change).tolist()]
    return list(zip(starts, [*starts[1:], rows]))


def write(conn: sqlite3.Connection, chunks) -> None:
    """Insert encoded chunks inside the caller's transaction."""
    for split, epoch, rows, values in chunks:
        chunk = conn.execute("INSERT INTO instance_chunks(split, epoch, rows) VALUES (?, ?, ?)",
                             (split, epoch, rows)).lastrowid
        conn.executemany("INSERT INTO instance_values(chunk, name, dtype, data) VALUES (?, ?, ?, ?)",
                         [(chunk, name, dtype, data) for name, dtype, data in values])


def nbytes(chunks) -> int:
    return sum(len(data) + 64 for *_, values in chunks for _, _, data in values)


def _where(split: str | None, epoch: int | None, table: str = "") -> tuple[str, list]:
    clauses, params = [], []
    if split is not None:
        clauses.append(f"{table}split = ?")
        params.append(split)
    if epoch is not None:
        clauses.append(f"{table}epoch = ?")
        params.append(int(epoch))
    return " AND ".join(clauses) or "1", params


def count(conn: sqlite3.Connection, split: str | None = None, epoch: int | None = None) -> int:
    where, params = _where(split, epoch)
    return int(conn.execute(f"SELECT COALESCE(SUM(rows), 0) FROM instance_chunks WHERE {where}", params).fetchone()[0])


def epochs(conn: sqlite3.Connection, split: str) -> set[int]:
    return {int(e) for (e,) in conn.execute(
        "SELECT DISTINCT epoch FROM instance_chunks WHERE split = ? AND epoch IS NOT NULL", (split,))}


def delete(conn: sqlite3.Connection, where: str, params: Iterable) -> None:
    """Delete the chunks matching ``where`` (on instance_chunks' columns) with their values."""
    params = list(params)
    conn.execute(f"DELETE FROM instance_values WHERE chunk IN (SELECT id FROM instance_chunks WHERE {where})", params)
    conn.execute(f"DELETE FROM instance_chunks WHERE {where}", params)


def decode(dtype: str, data: bytes, rows: int) -> np.ndarray:
    kind = DTYPES.get(dtype)
    if kind is None or len(data) != rows * kind.itemsize:
        raise ChunkError(f"a stored column does not decode (dtype {str(dtype)[:8]!r}, {len(data)} bytes for {rows} rows)")
    return np.frombuffer(data, dtype=kind)


def read(conn: sqlite3.Connection, names: list[str], split: str | None = None, epoch: int | None = None,
         instance_ids: Iterable[int] | None = None, limit: int | None = None) -> dict[str, np.ndarray]:
    """The columns ``names`` of the matching rows, in write order: integer columns as int64
    (float64 with NaN where some chunk lacks them), others as float64, ``split`` as objects."""
    where, params = _where(split, epoch)
    chunks = conn.execute(f"SELECT id, split, epoch, rows FROM instance_chunks WHERE {where} ORDER BY id",
                          params).fetchall()
    masks: dict[int, np.ndarray] = {}
    if instance_ids is not None:
        wanted = np.asarray(sorted({int(i) for i in instance_ids}), dtype=np.int64)
        sizes = {chunk: rows for chunk, _, _, rows in chunks}
        joined, _ = _where(split, epoch, "c.")
        for chunk, dtype, data in conn.execute(
                "SELECT v.chunk, v.dtype, v.data FROM instance_values v JOIN instance_chunks c ON c.id = v.chunk "
                f"WHERE v.name = 'instance_id' AND {joined}", params):
            if chunk in sizes:
                masks[chunk] = np.isin(decode(dtype, data, sizes[chunk]), wanted)
        chunks = [c for c in chunks if c[0] in masks and masks[c[0]].any()]
    if limit is not None:
        kept, total = [], 0
        for chunk in chunks:
            if total >= limit:
                break
            kept.append(chunk)
            total += int(masks[chunk[0]].sum()) if chunk[0] in masks else chunk[3]
        chunks = kept
    stored = [name for name in names if name not in PER_CHUNK]
    values: dict[tuple[int, str], np.ndarray] = {}
    if stored and chunks:
        sizes = {chunk: rows for chunk, _, _, rows in chunks}
        ids = list(sizes)
        for start in range(0, len(ids), _IDS_PER_QUERY):
            part = ids[start:start + _IDS_PER_QUERY]
            sql = (f"SELECT chunk, name, dtype, data FROM instance_values WHERE chunk IN ({', '.join('?' * len(part))})"
                   f" AND name IN ({', '.join('?' * len(stored))})")
            for chunk, name, dtype, data in conn.execute(sql, [*part, *stored]):
                values[(chunk, name)] = decode(dtype, data, sizes[chunk])
    out = {}
    for name in names:
        parts, missing = [], False
        for chunk, chunk_split, chunk_epoch, rows in chunks:
            if name == "split":
                part = np.full(rows, chunk_split, dtype=object)
            elif name == "epoch":
                missing |= chunk_epoch is None
                part = np.full(rows, np.nan if chunk_epoch is None else chunk_epoch)
            else:
                part = values.get((chunk, name))
                if part is None:
                    missing, part = True, np.full(rows, np.nan)
            parts.append(part[masks[chunk]] if chunk in masks else part)
        integer = CORE_INSTANCE_COLUMNS.get(name, "REAL") == "INTEGER" and not missing
        kind = object if name == "split" else np.int64 if integer else np.float64
        column = np.concatenate(parts).astype(kind, copy=False) if parts else np.empty(0, dtype=kind)
        out[name] = column[:limit] if limit is not None else column
    return out
