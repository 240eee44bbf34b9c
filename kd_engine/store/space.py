"""A full disk as one line: which path, how much space, and what the run kept.

SQLite says "database or disk is full", torch.save "basic_ios::clear: iostream error" and
safetensors "No space left on device (os error 28)"; `disk_full_error` turns any of them into a
`DiskFullError` naming the path and the space it needed. `ensure_space` refuses a write that
cannot fit before it starts, so a checkpoint is never left half-written.
"""
from __future__ import annotations

import errno
import shutil
import sqlite3
from pathlib import Path

from kd_engine.errors import KDWError

MB = 1024 * 1024


class DiskFullError(KDWError):
    """The filesystem of a run (or of a cache) has no room for a write."""


def free_bytes(path: str | Path) -> int | None:
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def _mb(n: int) -> str:
    return f"{n / MB:.1f} MB"


def disk_full_message(path: str | Path, needed: int | None = None) -> str:
    free = free_bytes(path)
    need = f"needs about {_mb(needed)}" if needed else "needs more space"
    have = f", {_mb(free)} free" if free is not None else ""
    return f"{path}: no space left on device (the write {need}{have}); free some space and try again"


def ensure_space(path: str | Path, needed: int, margin: int = MB // 4) -> None:
    """Refuse a write of `needed` bytes (plus a margin) that the filesystem cannot hold."""
    free = free_bytes(path)
    if free is not None and free < needed + margin:
        raise DiskFullError(disk_full_message(path, needed + margin))


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) is a full disk, whichever library raised it."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, DiskFullError):
            return True
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and "disk is full" in text:
            return True
        if "No space left on device" in text or "os error 28" in text:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def disk_full_error(exc: BaseException, path: str | Path, needed: int | None = None) -> BaseException:
    """`DiskFullError` for a full disk, else `exc` unchanged (to be re-raised)."""
    if isinstance(exc, DiskFullError):
        return exc
    if is_disk_full(exc):
        return DiskFullError(disk_full_message(path, needed))
    # torch.save's C++ stream reports a failed write without saying why: ask the filesystem.
    text = str(exc)
    if isinstance(exc, RuntimeError) and ("iostream error" in text or "unexpected pos" in text
                                          or "PytorchStreamWriter failed" in text):
        free = free_bytes(path)
        if free is not None and (needed is None or free < needed + MB):
            return DiskFullError(disk_full_message(path, needed))
    return exc
