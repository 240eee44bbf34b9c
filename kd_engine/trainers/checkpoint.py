"""Checkpoints. Model weights are safetensors (safe to share); the resumable training state is
written atomically with torch.save and read back with weights_only=True."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from kd_engine.errors import CheckpointError
from kd_engine.faults import fault_point
from kd_engine.store.space import disk_full_error, ensure_space


def _atomic(path: Path, write, needed: int = 0, fault: str | None = None) -> None:
    """Write through a temporary file of this process (two writers never share one) and rename.
    A write that cannot fit is refused before it starts, and a full disk met during the write
    is one `DiskFullError` line; either way the previous file stays as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ensure_space(path.parent, needed)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
    except Exception as exc:
        error = disk_full_error(exc, path, needed)  # asks the filesystem before the tmp is removed
        tmp.unlink(missing_ok=True)
        if error is exc:
            raise
        raise error from None
    if fault:
        fault_point(fault)
    os.replace(tmp, path)


def _nbytes(value: Any) -> int:
    """The tensor bytes in a (nested) state: what torch.save or safetensors will write, roughly."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 16


def save_weights(model: nn.Module, path: Path, metadata: dict[str, Any] | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"kdw": json.dumps(metadata or {})}
    _atomic(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta), _nbytes(tensors))


def read_metadata(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return json.loads((handle.metadata() or {}).get("kdw", "{}"))


def load_weights(model: nn.Module, path: str | Path, field: str = "checkpoint",
                 strict: bool = True) -> dict[str, Any]:
    """Load weights into `model` from a .safetensors or a .pth/.pt state_dict (read with
    weights_only=True; nested and ``module.``-prefixed dicts are unwrapped, see kd_engine.weights).

    A mismatch is a one-line CheckpointError naming the first missing, unexpected and reshaped
    tensors; ``strict=False`` loads what fits and logs a one-line summary. Returns the engine's
    metadata stored in the file ({} for files the engine did not write).
    """
    from kd_engine.weights import load_into

    return load_into(model, path, field, strict)[0]


def save_state(path: Path, state: dict[str, Any]) -> None:
    _atomic(Path(path), lambda tmp: torch.save(state, tmp), _nbytes(state), fault="state_written")


def load_state(path: Path) -> dict[str, Any]:
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no training state to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable training state ({exc})") from None
