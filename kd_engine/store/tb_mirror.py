"""TensorBoard mirror of a run's scalars, in a process of its own.

It tails the run's SQLite store (the source of truth) and appends the new rows to event files
under ``tb/``, so TensorBoard users can open a run while the trainer's step pays nothing for it:
building and serialising event protobufs used to cost ~0.5 ms a step on a small model when it
ran in a thread of the trainer (the GIL made the step wait for it).

The trainer starts it with ``TensorBoardMirror.start`` and holds the write end of a pipe to its
stdin; closing that pipe (``stop()``, or the trainer's death, however it dies) makes the mirror
read the store once more and exit. No signal can race its start-up. Run as a script (not
``-m``) it imports only the standard library and ``tensorboard``, so it is up in a fraction of a
second. The trainer starts it at its first flush of scalars. It runs at a lower scheduling
priority (nice 10), so its start-up (about 0.5 s of imports) and its polls only use idle CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from itertools import groupby
from pathlib import Path

POLL_S = 1.0
NICENESS = 10  # below the trainer's scheduling priority: the mirror only uses idle CPU
DB_NAME = "store.sqlite"  # kept equal to kd_engine.store.schema.DB_NAME (tested)


class TensorBoardMirror:
    """The trainer's handle on its mirror process."""

    def __init__(self, process: subprocess.Popen):
        self.process = process

    @classmethod
    def start(cls, run_dir: Path, since_rowid: int = 0, purge_step: int | None = None) -> "TensorBoardMirror":
        """Mirror rows after `since_rowid`; `purge_step` (a resumed run) tells TensorBoard to
        drop events of an earlier session from that step on."""
        command = [sys.executable, str(Path(__file__).resolve()), str(run_dir), "--since", str(since_rowid)]
        if purge_step is not None:
            command += ["--purge-step", str(purge_step)]
        with open(Path(run_dir) / "tb_mirror.log", "ab") as log:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # a Ctrl-C to the trainer is the trainer's
        return cls(process)

    def stop(self, timeout: float = 30.0) -> None:
        """Close the pipe (a last pass over the store) and wait for the events to be written."""
        self.process.stdin.close()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _stopped(timeout: float) -> bool:
    """Wait up to `timeout` s for the trainer's end of the pipe to close (EOF on stdin)."""
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    return bool(ready) and not os.read(sys.stdin.fileno(), 4096)


def mirror_new_rows(conn: sqlite3.Connection, writer, since_rowid: int) -> int:
    """Append the rows after `since_rowid` (one event per step and wall time, all its scalars in
    one summary); returns the last rowid written."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.compat.proto.event_pb2 import Event

    rows = conn.execute("SELECT rowid, step, key, value, wall FROM scalars WHERE rowid > ? ORDER BY rowid",
                        (since_rowid,)).fetchall()
    for (step, wall), group in groupby(rows, key=lambda row: (row[1], row[4])):
        values = [Summary.Value(tag=key, simple_value=value) for _rowid, _step, key, value, _wall in group]
        writer.add_event(Event(wall_time=wall, step=step, summary=Summary(value=values)))
    return rows[-1][0] if rows else since_rowid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Mirror a run's scalars into TensorBoard event files.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--since", type=int, default=0, help="mirror rows after this rowid")
    parser.add_argument("--purge-step", type=int, default=None)
    args = parser.parse_args(argv)
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):  # a mirror must never take a core from the trainer
        os.nice(NICENESS)
    # a queue that holds a whole poll's events: its writer thread then takes them in one go
    # instead of a hand-over per 10 events
    writer = EventFileWriter(str(args.run_dir / "tb"), max_queue_size=4096)
    if args.purge_step is not None:
        writer.add_event(Event(step=args.purge_step, wall_time=time.time(),
                               session_log=SessionLog(status=SessionLog.START)))
    conn = sqlite3.connect(f"file:{args.run_dir / DB_NAME}?mode=ro", uri=True, timeout=10.0)
    last, done = args.since, False
    try:
        while True:
            last = mirror_new_rows(conn, writer, last)
            writer.flush()
            if done:
                return 0
            done = _stopped(POLL_S)  # then one last pass
    finally:
        writer.close()
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
