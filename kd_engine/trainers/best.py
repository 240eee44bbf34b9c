"""The best-validation checkpoint: beside the last epoch's ``student.safetensors``, the weights of
the epoch whose validation ``metric`` was best so far (``best_checkpoint: {metric, mode}``).

Only a strictly better value replaces it, so an epoch without a validation pass (``eval_every``)
never does, and ties keep the earlier epoch. The best value and epoch are part of the resume
state; the file's metadata and the run meta (``best_checkpoint``) hold them too.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

from torch import nn

from kd_engine.errors import ConfigError
from kd_engine.trainers.checkpoint import save_weights

BEST_FILE = "student_best.safetensors"


class BestCheckpoint:
    """Tracks the best value of ``metric`` (None: off, nothing is ever saved)."""

    def __init__(self, metric: str | None, mode: str = "max"):
        if mode not in ("max", "min"):
            raise ConfigError(f"best_checkpoint.mode: expected 'max' or 'min', got {mode!r}")
        self.metric, self.mode = metric, mode
        self.value: float | None = None
        self.epoch: int | None = None

    @classmethod
    def of(cls, cfg, val_size: int) -> "BestCheckpoint":
        """``cfg.best_checkpoint``'s; a run without a validation split cannot pick a best epoch."""
        metric = cfg.best_checkpoint.metric
        if metric is not None and not val_size:
            raise ConfigError(f"best_checkpoint.metric: {metric!r} needs a validation split, and this run "
                              "has none (data.val_fraction is 0)")
        return cls(metric, cfg.best_checkpoint.mode)

    def better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.value is None:
            return True
        return value > self.value if self.mode == "max" else value < self.value

    def update(self, epoch: int, metrics: Mapping[str, float], module: nn.Module, folder: Path,
               meta: dict, writer=None) -> bool:
        """After ``epoch``, given the latest validation ``metrics``: when they are the best so far,
        write ``module``'s weights to ``folder/student_best.safetensors`` (``meta`` plus the
        best's summary), record the summary in the run meta (``best_checkpoint``, through
        ``writer``) and return True. A metric name that the validation never logs is a one-line
        ConfigError naming the field."""
        if self.metric is None or not metrics:
            return False
        if self.metric not in metrics:
            logged = ", ".join(sorted(k for k in metrics if k.startswith("val/")))
            raise ConfigError(f"best_checkpoint.metric: {self.metric!r} is not a logged validation metric "
                              f"(logged: {logged})")
        value = float(metrics[self.metric])
        if not self.better(value):
            return False
        self.value, self.epoch = value, epoch
        save_weights(module, Path(folder) / BEST_FILE, {**meta, "best": self.summary()})
        if writer is not None:
            writer.set_meta(best_checkpoint=self.summary())
        return True

    def summary(self) -> dict | None:
        if self.metric is None:
            return None
        return {"metric": self.metric, "mode": self.mode, "value": self.value, "epoch": self.epoch,
                "file": f"checkpoints/{BEST_FILE}"}

    def state_dict(self) -> dict:
        return {"value": self.value, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.epoch = state.get("value"), state.get("epoch")

