"""Reading model weights that anyone saved: safetensors, or a PyTorch state_dict in a .pth/.pt.

Published checkpoints rarely hold a bare state_dict: training scripts nest it under
``state_dict``, ``model`` or ``state_dict_ema`` and DataParallel/DDP/``torch.compile`` prefix
every key with ``module.`` or ``_orig_mod.``. ``read_state_dict`` unwraps both. A ``.pth`` is read
with ``torch.load(weights_only=True)``, which refuses pickled Python objects without running
them: a checkpoint can carry code, and loading a teacher must never execute it.

``fit_state_dict`` compares a state_dict with a model before loading, so a mismatch is one line
naming the first missing and unexpected keys and the first shape that differs, and
``strict=False`` loads what fits (a head of another size stays freshly initialised).
"""
from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from kd_engine.errors import CheckpointError

log = logging.getLogger("kdw")
NESTING_KEYS = ("state_dict", "model", "state_dict_ema")
PREFIXES = ("module.", "_orig_mod.")
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def _is_tensor_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _unwrap(obj: Any, path: Path, field_name: str) -> dict[str, torch.Tensor]:
    """The tensor dict in a loaded checkpoint: itself, or under one of NESTING_KEYS."""
    if _is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in NESTING_KEYS:
            if _is_tensor_dict(obj.get(key)):
                return dict(obj[key])
        keys = ", ".join(map(str, list(obj)[:8]))
        raise CheckpointError(f"{field_name}: {path} holds no state_dict of tensors at the top or under "
                              f"{', '.join(NESTING_KEYS)} (its keys: {keys})")
    raise CheckpointError(f"{field_name}: {path} holds a {type(obj).__name__}, not a state_dict")


def strip_prefixes(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes (``module.``, ``_orig_mod.``) that every key has and the model lacks."""
    changed = True
    while changed and state:
        changed = False
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in model_keys):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def read_state_dict(path: str | Path, field_name: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of a .safetensors or a .pth/.pt state_dict, and the engine's metadata (or {})."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{field_name}: file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = json.loads((handle.metadata() or {}).get("kdw", "{}"))
            return load_file(str(path)), meta
        except Exception as exc:  # safetensors raises several types for a damaged file
            raise CheckpointError(f"{field_name}: {path} is not a readable safetensors file "
                                  f"({str(exc).splitlines()[0]})") from None
    if path.suffix not in _TORCH_SUFFIXES:
        raise CheckpointError(f"{field_name}: {path}: unknown weights format {path.suffix!r} "
                              f"(allowed: .safetensors, {', '.join(_TORCH_SUFFIXES)})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{field_name}: {path} holds pickled Python objects, not only tensors; "
                              "refused without running it (save model.state_dict() or safetensors)") from None
    except Exception as exc:
        raise CheckpointError(f"{field_name}: {path} is not a readable PyTorch file "
                              f"({str(exc).splitlines()[0]})") from None
    return _unwrap(obj, path, field_name), {}


@dataclass
class Fit:
    """How a state_dict fits a model: what loads, and what is missing, unexpected or reshaped."""

    loadable: dict[str, torch.Tensor]
    total: int = 0  # tensors in the model's state_dict
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reshaped: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, file shape, model shape

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.reshaped)

    def problems(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"missing {len(self.missing)} tensors (e.g. {self.missing[0]})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected (e.g. {self.unexpected[0]})")
        if self.reshaped:
            key, in_file, in_model = self.reshaped[0]
            parts.append(f"{len(self.reshaped)} of another shape (e.g. {key}: {in_file} in the file, "
                         f"{in_model} in the model)")
        return "; ".join(parts)


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> Fit:
    """Sort the file's tensors into loadable, unexpected and reshaped, in the model's key order."""
    own = model.state_dict()
    state = strip_prefixes(state, set(own))
    fit = Fit(loadable={}, total=len(own))
    for key, mine in own.items():
        if key not in state:
            fit.missing.append(key)
        elif tuple(state[key].shape) != tuple(mine.shape):
            fit.reshaped.append((key, tuple(state[key].shape), tuple(mine.shape)))
        else:
            fit.loadable[key] = state[key]
    fit.unexpected = [k for k in state if k not in own]
    return fit


def load_into(model: nn.Module, path: str | Path, field_name: str = "checkpoint",
              strict: bool = True) -> tuple[dict[str, Any], Fit]:
    """Load ``path`` into ``model``; a mismatch is one CheckpointError line unless ``strict=False``,
    which loads the tensors that fit, leaves the rest as initialised and logs a one-line summary."""
    state, meta = read_state_dict(path, field_name)
    fit = fit_state_dict(model, state)
    if not fit.exact and strict:
        raise CheckpointError(f"{field_name}: {path} does not fit the model: {fit.problems()} "
                              "(set strict: false to load what fits)")
    if not fit.loadable:
        raise CheckpointError(f"{field_name}: {path}: no tensor fits the model ({fit.problems()})")
    model.load_state_dict(fit.loadable, strict=False)
    if not strict:
        log.info(summary(fit, path, field_name))
    return meta, fit


def summary(fit: Fit, path: str | Path, field_name: str) -> str:
    """One line for a non-strict load: how much loaded and what did not."""
    line = f"{field_name}: loaded {len(fit.loadable)} of {fit.total} tensors from {path}"
    return line + (f"; {fit.problems()}" if not fit.exact else "")


def is_engine_checkpoint(path: str | Path) -> bool:
    """True when ``path`` is a student checkpoint this engine wrote in a run (it names the data it
    was trained on, which the leakage guard checks); anything else is an external teacher."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("kdw", "{}"))
    except Exception:
        return False
    return bool(meta.get("model")) and bool(meta.get("data"))


def load_init(model: nn.Module, spec: Any, field_name: str = "student") -> nn.Module:
    """Load ``spec.init`` (when set) into a freshly built model, honouring ``spec.strict``."""
    path = getattr(spec, "init", None)
    if path:
        load_into(model, path, f"{field_name}.init", strict=getattr(spec, "strict", True))
    return model


def teacher_origin(teacher: Any) -> str | None:
    """"external" for a teacher checkpoint this engine did not write (the leakage guard cannot
    vouch for what it saw), "engine" for one it trained or cached, None without a teacher."""
    if teacher is None:
        return None
    checkpoint = getattr(teacher, "checkpoint", None)
    return "external" if checkpoint and not is_engine_checkpoint(checkpoint) else "engine"
