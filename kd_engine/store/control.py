"""Stopping a run: a signal goes only to the process that is provably this run's trainer.

A pid read from a store proves nothing on its own: the store may be a copy from another machine,
a runs directory may be shared between hosts, the pid may have been reused since the trainer
died, or the store may be crafted. Before signalling, `trainer_pid` checks that

1. the run was started on this host;
2. a live process holds the run's writer lock (`kd_engine.store.lock`);
3. the recorded pid still has the start time the trainer recorded (so it was not reused), and,
   where the kernel lists lock holders (/proc/locks), it is one of the lock's holders.
"""
from __future__ import annotations

import os
import signal
import socket

from kd_engine.errors import KDWError
from kd_engine.store.lock import is_locked, lock_holders, lock_owner, process_start_time
from kd_engine.store.reader import Run


class NotThisRunError(KDWError):
    """The process a store names cannot be shown to be that run's trainer."""


def trainer_pid(run: Run) -> int:
    """The pid of `run`'s live trainer on this host, or a one-line refusal saying why not."""
    meta = run.meta()
    host, here = meta.get("host"), socket.gethostname()
    if host and host != here:
        raise NotThisRunError(f"run {run.run_id} was started on host {host!r}, not on this host ({here!r}); "
                              f"stop it there")
    locked = is_locked(run.run_dir)
    if locked is False:
        raise NotThisRunError(f"run {run.run_id} is {run.status()}: no trainer holds its writer lock, "
                              "so there is nothing to stop")
    owner = lock_owner(run.run_dir)
    try:
        pid = int(owner.get("pid") or meta.get("pid"))
    except (TypeError, ValueError):
        raise NotThisRunError(f"run {run.run_id}: no trainer pid recorded; not signalled") from None
    if pid <= 1 or pid == os.getpid():
        raise NotThisRunError(f"run {run.run_id}: recorded pid {pid} cannot be its trainer; not signalled")
    recorded = owner.get("start_time", meta.get("pid_start"))
    current = process_start_time(pid)
    if current is not None and recorded != current:
        raise NotThisRunError(f"run {run.run_id}: pid {pid} is not the process that started the run "
                              "(its start time differs: the pid was reused or the store copied); not signalled")
    holders = lock_holders(run.run_dir)
    if holders and pid not in holders:
        raise NotThisRunError(f"run {run.run_id}: pid {pid} does not hold the run's writer lock "
                              f"(held by {', '.join(map(str, sorted(holders)))}); not signalled")
    if locked is None and current is None:  # neither file locks nor /proc: nothing can be proven
        raise NotThisRunError(f"run {run.run_id}: this platform cannot confirm that pid {pid} is the "
                              "run's trainer; stop it from its terminal")
    return pid


def stop_run(run: Run) -> str:
    """SIGTERM to the run's trainer (it saves nothing new and marks the run `stopped`)."""
    pid = trainer_pid(run)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        raise KDWError(f"run {run.run_id}: its trainer (pid {pid}) has just ended") from None
    return f"sent SIGTERM to run {run.run_id} (pid {pid})"
