"""Config sections of the training essentials: per-term weight schedules, the student EMA and
the best-validation checkpoint. `kd_engine.config` re-exports them; the trainer reads them
(`kd_engine.trainers.stepper`, `kd_engine.trainers.best`; docs/training.md)."""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from kd_engine.config_types import _Strict, Count, Real


class WeightSchedule(_Strict):
    """How a term's weight changes over epochs: epoch ``e`` (from 0) multiplies the configured
    weight by a factor.

    * ``linear_warmup``: ``min(1, (e + 1) / epochs)``, DKD's warm-up (its first epoch already
      gets ``1/epochs``); takes no start or end.
    * ``linear``: ``start + (end - start) · min(1, e / epochs)``, then ``end``.
    * ``cosine``: ``end + (start - end) · (1 + cos(π · min(1, e / epochs))) / 2``, then ``end``
      (a half cosine from ``start`` at epoch 0 to ``end`` at epoch ``epochs``).
    """

    kind: Literal["linear_warmup", "linear", "cosine"] = "linear_warmup"
    epochs: Count = Field(20, gt=0)
    start: Real = Field(0.0, ge=0.0)
    end: Real = Field(1.0, ge=0.0)

    @model_validator(mode="after")
    def _ends_only_for_ramps(self) -> "WeightSchedule":
        if self.kind == "linear_warmup" and {"start", "end"} & self.model_fields_set:
            raise ValueError("start and end apply to kind linear and cosine; linear_warmup ramps from "
                             "1/epochs to 1")
        return self

    def factor(self, epoch: int) -> float:
        if self.kind == "linear_warmup":
            return min(1.0, (epoch + 1) / self.epochs)
        progress = min(1.0, epoch / self.epochs)
        if self.kind == "linear":
            return self.start + (self.end - self.start) * progress
        return self.end + (self.start - self.end) * (1.0 + math.cos(math.pi * progress)) / 2.0


class EMAConfig(_Strict):
    """A student EMA, θ_ema ← decay · θ_ema + (1 − decay) · θ after each optimizer step. When it is
    on, the EMA weights are the ones evaluated (val and test metrics), checkpointed as
    ``student.safetensors`` and exported; the raw weights live on in the resume state."""

    decay: Real = Field(0.999, gt=0.0, lt=1.0)


class BestCheckpointConfig(_Strict):
    """Besides the last epoch's ``student.safetensors``: with ``metric`` set (a validation
    metric, e.g. ``val/student_acc``), the weights of the best validation so far go to
    ``student_best.safetensors`` (its metadata and the run meta hold the epoch and the value)."""

    metric: str | None = None
    mode: Literal["max", "min"] = "max"

    @field_validator("metric")
    @classmethod
    def _validation_metric(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("val/"):
            raise ValueError("expected a validation metric (val/...); choosing on the test split would leak it")
        return value
