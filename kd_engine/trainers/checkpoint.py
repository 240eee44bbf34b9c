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


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_weights(model: nn.Module, path: Path, metadata: dict[str, Any] | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"kdw": json.dumps(metadata or {})}
    _atomic(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))


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
    _atomic(Path(path), lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict[str, Any]:
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no training state to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable training state ({exc})") from None
