"""The run store: one directory per run with an SQLite (WAL) database.

`list_runs`, `open_run` and `Run` are the public read API; the dashboard uses nothing else.
`RunWriter` is the trainer's side.
"""
from kd_engine.store.reader import Run, StoreError, list_runs, open_run, resolve_run
from kd_engine.store.writer import RunWriter, checkpoint_note, new_run_id

__all__ = ["Run", "RunWriter", "StoreError", "checkpoint_note", "list_runs", "new_run_id", "open_run",
           "resolve_run"]
