"""Adaptive Instance Distillation (Lan & Tian, 2022) for per-sample losses and for detection.

w_i = exp(−α · L^T_task,i): the teacher's own task loss on instance i sets how much the student
imitates it there. Where the teacher is right (L^T → 0) w → 1; where it is wrong the student
learns the instance mainly from its label. The weight is not normalised, so its mean is below 1
and AID also weakens distillation overall; the `uniform` strategy with `value` = AID's mean
weight is the control for that (`batch_mean: true` is its per-batch form), and `shuffle: true`
(weights permuted across the batch) is the control for whether *which* instance gets which
weight matters.

Detection runs read `granularity` (per_image_level by default, per_level_batch, per_image,
per_gt), `decoupled` and, for per_gt, `background`; see `kd_engine.weighting.aid_detection`.
A classification sample is one image, so there only per_image applies.
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
from annotated_types import Ge

from kd_engine.errors import ConfigError
from kd_engine.weighting.aid_detection import _check, aid_detection_weights, controlled
from kd_engine.weighting.base import WEIGHTINGS, WeightingStrategy, aid_weights


@WEIGHTINGS.register("aid")
class AdaptiveInstance(WeightingStrategy):
    requires = ("teacher_loss",)
    tasks = ("classification", "detection", "dense")

    def __init__(self, alpha: Annotated[float, Ge(0)] = 0.1, shuffle: bool = False, seed: int = 0,
                 batch_mean: bool = False, granularity: str | None = None,
                 decoupled: bool = False, background: Literal["one", "image"] | None = None):
        if alpha < 0:
            raise ConfigError(f"weighting.params.alpha: must be >= 0, got {alpha}")
        if shuffle and batch_mean:
            raise ConfigError("weighting.params: shuffle and batch_mean are two different "
                              "controls; set one of them")
        if background is not None and granularity != "per_gt":
            raise ConfigError("weighting.params.background: only applies to granularity per_gt")
        if background not in (None, "one", "image"):
            raise ConfigError(f"weighting.params.background: must be 'one' or 'image', "
                              f"got {background!r}")
        self.alpha, self.shuffle, self.batch_mean = float(alpha), bool(shuffle), bool(batch_mean)
        self.granularity, self.decoupled = granularity, bool(decoupled)
        self.background = background or "one"
        self._generator = torch.Generator().manual_seed(int(seed))

    def check_task(self, task: str) -> None:
        if task == "detection":
            _check(self.granularity or "per_image_level", self.alpha)
            return
        if self.granularity not in (None, "per_image"):
            raise ConfigError(f"weighting.params.granularity: a {task} sample is one image, so "
                              f"only per_image applies, got {self.granularity!r}")
        if self.decoupled:
            raise ConfigError(f"weighting.params.decoupled: needs a detection run ({task} has "
                              "no separate box loss)")

    def _control(self, weights: torch.Tensor) -> torch.Tensor:
        if self.shuffle:
            order = torch.randperm(len(weights), generator=self._generator).to(weights.device)
            return weights[order]
        if self.batch_mean:
            return weights.mean().expand_as(weights).clone()
        return weights

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._control(aid_weights(batch["teacher_loss"], self.alpha))

    def detection_weights(self, teacher_losses):
        raw = aid_detection_weights(teacher_losses, self.alpha,
                                    self.granularity or "per_image_level", self.decoupled)
        mode = "shuffle" if self.shuffle else "mean" if self.batch_mean else None
        return controlled(raw, mode, self._generator), raw

    def describe(self) -> dict:
        return {"alpha": self.alpha, "granularity": self.granularity or "per_image_level"}

    def state_dict(self) -> dict:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self._generator.set_state(state["generator"])
