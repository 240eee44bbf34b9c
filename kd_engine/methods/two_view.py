"""The shared part of two-view self-distillation (Cr-KD, AdaSim, MDCS: papers 10, 14, 16; KD³'s (paper 12) original/perturbed
pair fits too): a Distiller base that draws two seeded augmented views per batch.

A subclass calls ``self.views(x, partner)`` in ``forward``; the views of optimisation step s come
from generators fixed by (run seed, s, stream), so a rerun or a resumed run sees the same views,
and the step counter is a buffer saved with the distiller. A method reads its ``distill.params``
with ``kd_engine.params.read_params``.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from kd_engine.data.views import ViewSpec, multi_crop, two_views
from kd_engine.methods.base import Distiller


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
