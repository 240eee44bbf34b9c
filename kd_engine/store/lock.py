"""One writer per run: an exclusive OS file lock held by the trainer for its whole life.

The lock is `fcntl.flock` on ``<run>/writer.lock``. The kernel drops it when the process dies,
however it dies (SIGKILL, OOM, power loss of the process), so "is anyone writing this run?" is
answered by the lock itself rather than by a heartbeat that a paused or busy trainer may miss.
The holder also writes who it is (pid, host, process start time) into the file, which lets
`kdw stop` check that a pid still belongs to this run's trainer before signalling it.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from kd_engine.errors import KDWError

try:  # POSIX; elsewhere runs are not locked and their liveness falls back to the heartbeat
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "writer.lock"


class RunBusyError(KDWError):
    """Another live process holds the run's writer lock."""


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat); a
    reused pid has another one. None where /proc is not available or the pid is gone."""
    try:
        text = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces or parentheses.
    fields = text[text.rfind(")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def owner_record() -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "start_time": process_start_time(pid)}


class RunLock:
    """The writer lock of one run directory, held until `release()` or the process's death."""

    def __init__(self, run_dir: Path, fd: int):
        self.run_dir, self._fd = Path(run_dir), fd

    @classmethod
    def acquire(cls, run_dir: str | Path) -> "RunLock":
        run_dir = Path(run_dir)
        path = run_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise RunBusyError(busy_message(run_dir)) from None
        record = json.dumps(owner_record()).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        return cls(run_dir, fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def __del__(self):  # a writer dropped without close() (tests, notebooks) frees the run
        self.release()


def is_locked(run_dir: str | Path) -> bool | None:
    """True while a live process holds the run's writer lock, False when it is free (or was never
    taken), None where the platform cannot tell."""
    if fcntl is None:
        return None
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock just taken
    return False


def lock_owner(run_dir: str | Path) -> dict[str, Any]:
    """What the holder wrote into the lock file (empty when unreadable)."""
    try:
        value = json.loads((Path(run_dir) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def lock_holders(run_dir: str | Path) -> set[int] | None:
    """PIDs the kernel lists (/proc/locks) as holding a flock on the run's lock file; None where
    /proc/locks is not available."""
    try:
        st = os.stat(Path(run_dir) / LOCK_NAME)
        lines = Path("/proc/locks").read_text().splitlines()
    except FileNotFoundError:
        return set()
    except OSError:
        return None
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders = set()
    for line in lines:
        parts = line.split()
        if "->" in parts:  # a waiter, not a holder
            continue
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == wanted:
            holders.add(int(parts[4]))
    return holders


def busy_message(run_dir: Path) -> str:
    owner = lock_owner(run_dir)
    who = f" (pid {owner.get('pid')} on {owner.get('host')})" if owner.get("pid") else ""
    return (f"run {Path(run_dir).name} is being written by another live trainer{who}; "
            "stop it first, or wait for it to end")


def require_unlocked(run_dir: str | Path) -> None:
    """Refuse early (before data and models are built) when a trainer still writes the run."""
    if is_locked(run_dir):
        raise RunBusyError(busy_message(Path(run_dir)))
