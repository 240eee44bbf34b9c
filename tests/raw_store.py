"""Per-instance rows read straight from a run's SQLite file, not through `kd_engine.store`'s
read API: tests that check the read API (or what is computed from it) against the file itself
decode the column chunks here on their own (`kd_engine.store.chunks` documents the layout)."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd


def raw_instances(run_dir: Path, columns: list[str], split: str | None = None) -> pd.DataFrame:
    """The rows of ``split`` (all splits with None), in write order, with ``columns`` (``split`` and
    ``epoch`` are kept per chunk); a column a chunk lacks is NaN."""
    conn = sqlite3.connect(f"file:{Path(run_dir) / 'store.sqlite'}?mode=ro", uri=True)
    try:
        where = "" if split is None else " WHERE split = ?"
        chunks = conn.execute(f"SELECT id, split, epoch, rows FROM instance_chunks{where} ORDER BY id",
                              [] if split is None else [split]).fetchall()
        frames = []
        for chunk, chunk_split, epoch, rows in chunks:
            stored = {name: np.frombuffer(data, dtype=np.dtype(dtype)) for name, dtype, data in conn.execute(
                "SELECT name, dtype, data FROM instance_values WHERE chunk = ?", (chunk,))}
            frames.append(pd.DataFrame({name: [chunk_split] * rows if name == "split" else
                                        np.full(rows, epoch) if name == "epoch" else
                                        stored.get(name, np.full(rows, np.nan)) for name in columns}))
    finally:
        conn.close()
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
