"""Methods of dense-prediction runs (``DENSE_METHODS``): ``scratch`` and ``standard``, per image.

A dense model returns per-pixel logits (B, K, H, W); a model with a continuous head names it in
``dense_outputs`` (``{"depth": "<module path>"}``) and the map is read through a feature tap.
The task loss of one image is the mean pixel cross-entropy, plus the mean squared depth error
when both the model and the data have a depth map (one loss per image, equally weighted, so the
teacher, trained by ``scratch``, learns both maps). Every per-image quantity is one value per
image, so the weighting strategies and the run store see images as instances, as they see
samples in classification.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from kd_engine.errors import ConfigError
from kd_engine.methods.base import Distiller, StepOutput
from kd_engine.methods.standard import Standard, _taps
from kd_engine.registry import Registry
from kd_engine.weighting import build_weighting

DENSE_METHODS: Registry = Registry("dense method")


def dense_forward(model: nn.Module, x: torch.Tensor, layers=()) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """(logits, depth map (B, H, W) or None, tapped features) of one forward pass."""
    depth_layer = getattr(model, "dense_outputs", {}).get("depth")
    names = sorted(set(layers) | ({depth_layer} if depth_layer else set()))
    with _taps(model, names) as feats:
        logits = model(x)
    depth = feats[depth_layer][:, 0] if depth_layer else None
    return logits, depth, feats


def task_losses(logits: torch.Tensor, y: torch.Tensor, depth_pred: torch.Tensor | None,
                maps: dict | None) -> dict[str, torch.Tensor]:
    """Per-image task losses: ``ce`` (mean pixel cross-entropy), ``depth_mse`` when there is a
    depth head and a depth map, and ``total`` (their sum)."""
    ce = F.cross_entropy(logits.float(), y, reduction="none").flatten(1).mean(dim=1)
    out = {"ce": ce, "total": ce}
    depth = (maps or {}).get("depth")
    if depth_pred is not None and depth is not None:
        out["depth_mse"] = (depth_pred.float() - depth.float()).pow(2).flatten(1).mean(dim=1)
        out["total"] = ce + out["depth_mse"]
    return out


def _per_image(prefix: str, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    values = {f"{prefix}_loss": losses["total"].detach()}
    if "depth_mse" in losses:
        values[f"{prefix}_depth_mse"] = losses["depth_mse"].detach()
    return values


@DENSE_METHODS.register("scratch")
class DenseScratch(Distiller):
    """The student alone on its per-pixel labels (and depth); a teacher, if given, is observed."""

    needs_teacher = False

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(student, teacher)

    def forward(self, x: torch.Tensor, y: torch.Tensor, maps: dict | None = None) -> StepOutput:
        logits, depth, _ = dense_forward(self.student, x)
        student = task_losses(logits, y, depth, maps)
        per_sample = _per_image("student", student)
        teacher_logits = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits, t_depth, _ = dense_forward(self.teacher, x)
            per_sample.update(_per_image("teacher", task_losses(teacher_logits, y, t_depth, maps)))
        return StepOutput(logits, {"task": student["total"].mean()}, per_sample, teacher_logits)


@DENSE_METHODS.register("standard")
class DenseStandard(Standard):
    """``standard`` on dense outputs: the student's per-image task loss plus the configured terms
    (``pixel_kd`` / ``channel_kd`` on the logits maps, feature terms on tapped maps), each image's
    distillation weighted by the strategy (``uniform`` or ``aid``, from per-image losses)."""

    bank_mode = None  # a teacher soft-label bank holds (B, C) logits of crops, not per-pixel maps

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(cfg, student, teacher, input_shape)
        self.weighting = build_weighting(cfg.weighting.strategy, cfg.weighting.params, task="dense")
        for index, term in enumerate(self.terms):
            if term.spec.inputs in ("logits", "logits_target") and not getattr(inspect.unwrap(term.spec.fn), "dense", False):
                raise ConfigError(f"distill.terms.{index}.loss: {cfg.distill.terms[index].loss} takes (B, C) "
                                  "logits; a dense run distils per pixel with pixel_kd or channel_kd, or "
                                  "with a feature term")

    def forward(self, x: torch.Tensor, y: torch.Tensor, maps: dict | None = None) -> StepOutput:
        with torch.no_grad():
            t_logits, t_depth, t_feats = dense_forward(self.teacher, x, self.teacher_layers)
        s_logits, s_depth, s_feats = dense_forward(self.student, x, self.student_layers)
        student, teacher = task_losses(s_logits, y, s_depth, maps), task_losses(t_logits, y, t_depth, maps)
        per_sample: dict[str, torch.Tensor] = {}
        distill = torch.zeros_like(student["total"])
        for term in self.terms:
            value = term(s_logits, t_logits, y, s_feats, t_feats)
            per_sample[f"term_{term.name}"] = value.detach()
            distill = distill + term.weight * value
        weights = self.weighting({"distill_loss": distill.detach(), "teacher_loss": teacher["total"].detach(),
                                  "student_loss": student["total"].detach()})
        if not self.weighting.differentiable:
            weights = weights.detach()
        per_sample.update(_per_image("student", student), **_per_image("teacher", teacher),
                          distill_loss=distill.detach(), weight=weights.detach())
        losses = {"task": self.task_weight * student["total"].mean(), "distill": (weights * distill).mean()}
        return StepOutput(s_logits, losses, per_sample, t_logits)
