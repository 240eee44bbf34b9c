"""What class-incremental methods share (the ``incremental`` task, `kd_engine.tasks.incremental`):
their registry, the per-object pass, and ``scratch`` (a model trained on its task's labels alone,
which is how the task-1 teacher is trained and cached).

A model here classifies every object slot of an image: its output is (B, objects, classes) and
the feature of each object is tapped at ``layer``. `ObjectPass` flattens a batch to N = B·objects
instances, the unit the losses and the per-instance records work with.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kd_engine.methods.base import Distiller, StepOutput
from kd_engine.models import feature_taps
from kd_engine.registry import Registry

INCREMENTAL_METHODS: Registry = Registry("incremental method")
FEATURE_LAYER = "decoder"  # the per-object token feature of `cell_transformer`


@dataclass
class ObjectPass:
    logits: torch.Tensor  # (N, C)
    features: torch.Tensor  # (N, D)


def object_pass(model, x: torch.Tensor, layer: str = FEATURE_LAYER) -> tuple[torch.Tensor, ObjectPass]:
    """The model's (B, objects, C) logits and its per-object logits and features flattened to N rows."""
    with feature_taps(model, [layer], field="distill.params.layer") as taps:
        logits = model(x)
    features = taps[layer]
    return logits, ObjectPass(logits.reshape(-1, logits.shape[-1]), features.reshape(-1, features.shape[-1]))


@INCREMENTAL_METHODS.register("scratch")
class IncrementalScratch(Distiller):
    """Per-object cross-entropy on the task's labels; a teacher, if given, is not used."""

    needs_teacher = False
    layer = FEATURE_LAYER

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(student, teacher)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        logits = self.student(x)
        task = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), reduction="none")
        return StepOutput(logits, {"task": task.mean()}, {"task_loss": task.detach()})
