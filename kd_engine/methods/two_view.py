"""The shared part of two-view self-distillation (cards 10, 14, 16; card 12's original/perturbed
pair fits too): a Distiller base that draws two seeded augmented views per batch.

A subclass calls ``self.views(x, partner)`` in ``forward``; the views of optimisation step s come
from generators fixed by (run seed, s, stream), so a rerun or a resumed run sees the same views,
and the step counter is a buffer saved with the distiller. ``method_params`` checks
``distill.params`` against the names a method allows, one ConfigError line per mistake.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from kd_engine.data.views import ViewSpec, multi_crop, two_views
from kd_engine.errors import ConfigError
from kd_engine.methods.base import Distiller


def method_params(method: str, params: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` overridden by ``params``; an unknown name or a value of the wrong kind is a
    ConfigError naming ``distill.params.<name>``."""
    out = dict(defaults)
    for key, value in (params or {}).items():
        if key not in defaults:
            raise ConfigError(f"distill.params.{key}: unknown parameter for method {method} "
                              f"(allowed: {', '.join(defaults)})")
        default = defaults[key]
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"distill.params.{key}: expected true or false, got {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool) and (
                isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"distill.params.{key}: expected a number, got {value!r}")
        if isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"distill.params.{key}: expected a string, got {value!r}")
        out[key] = type(default)(value) if isinstance(default, (int, float)) and not isinstance(default, bool) else value
    return out


class TwoViewDistiller(Distiller):
    """Base for methods that train on two (or more) augmented views of each batch."""

    def __init__(self, student, teacher, view_params: Mapping[str, Any] | None, seed: int):
        super().__init__(student, teacher)
        self.view_spec = ViewSpec.from_params(view_params)
        self.view_seed = int(seed)
        self.register_buffer("view_step", torch.zeros((), dtype=torch.long))

    def views(self, x: torch.Tensor, partner: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """View 1 of ``x`` and view 2 of ``partner`` (default ``x``) for the current step."""
        return two_views(x, self.view_spec, self.view_seed, int(self.view_step), partner)

    def crops(self, x: torch.Tensor, n_global: int = 2, n_local: int = 0) -> list[torch.Tensor]:
        return multi_crop(x, self.view_spec, self.view_seed, int(self.view_step), n_global, n_local)

    def after_step(self, step: int, epoch: int) -> None:
        self.view_step += 1
