"""Methods of dense-prediction runs (``DENSE_METHODS``): ``scratch`` and ``standard``, per image.

A dense model returns per-pixel logits (B, K, H, W); a model with a continuous head names it in
``dense_outputs`` (``{"depth": "<module path>"}``) and the map is read through a feature tap.
The task loss of one image is the mean pixel cross-entropy, plus the mean squared depth error
when both the model and the data have a depth map, plus the mean binary cross-entropy of the edge
logits when both have an edge map (one loss per image, equally weighted, so the
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


def dense_predict(model: nn.Module, x: torch.Tensor, layers=()) -> tuple[torch.Tensor, dict, dict]:
    """(logits, {output name: (B, H, W) map} for the model's ``dense_outputs`` (``depth``: the
    predicted depth, ``edges``: edge logits), tapped features) of one forward pass."""
    outputs = dict(getattr(model, "dense_outputs", {}))
    names = sorted(set(layers) | set(outputs.values()))
    with _taps(model, names) as feats:
        logits = model(x)
    return logits, {name: feats[layer][:, 0] for name, layer in outputs.items()}, feats


def dense_forward(model: nn.Module, x: torch.Tensor, layers=()) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """(logits, depth map (B, H, W) or None, tapped features) of one forward pass."""
    logits, preds, feats = dense_predict(model, x, layers)
    return logits, preds.get("depth"), feats


def task_losses(logits: torch.Tensor, y: torch.Tensor, depth_pred: torch.Tensor | None,
                maps: dict | None, edge_pred: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-image task losses: ``ce`` (mean pixel cross-entropy), ``depth_mse`` when there is a
    depth head and a depth map, ``edge_bce`` (mean binary cross-entropy of the edge logits) when
    there is an edge head and an edge map, and ``total`` (their sum)."""
    ce = F.cross_entropy(logits.float(), y, reduction="none").flatten(1).mean(dim=1)
    out = {"ce": ce, "total": ce}
    depth, edges = (maps or {}).get("depth"), (maps or {}).get("edges")
    if depth_pred is not None and depth is not None:
        out["depth_mse"] = (depth_pred.float() - depth.float()).pow(2).flatten(1).mean(dim=1)
        out["total"] = out["total"] + out["depth_mse"]
    if edge_pred is not None and edges is not None:
        out["edge_bce"] = F.binary_cross_entropy_with_logits(edge_pred.float(), edges.float(),
                                                             reduction="none").flatten(1).mean(dim=1)
        out["total"] = out["total"] + out["edge_bce"]
    return out


def predict_losses(logits: torch.Tensor, y: torch.Tensor, preds: dict, maps: dict | None) -> dict[str, torch.Tensor]:
    """``task_losses`` of a ``dense_predict`` result."""
    return task_losses(logits, y, preds.get("depth"), maps, preds.get("edges"))


def _per_image(prefix: str, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    values = {f"{prefix}_loss": losses["total"].detach()}
    for key in ("depth_mse", "edge_bce"):
        if key in losses:
            values[f"{prefix}_{key}"] = losses[key].detach()
    return values


@DENSE_METHODS.register("scratch")
class DenseScratch(Distiller):
    """The student alone on its per-pixel labels (and depth); a teacher, if given, is observed."""

    needs_teacher = False

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(student, teacher)

    def forward(self, x: torch.Tensor, y: torch.Tensor, maps: dict | None = None) -> StepOutput:
        logits, preds, _ = dense_predict(self.student, x)
        student = predict_losses(logits, y, preds, maps)
        per_sample = _per_image("student", student)
        teacher_logits = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits, t_preds, _ = dense_predict(self.teacher, x)
            per_sample.update(_per_image("teacher", predict_losses(teacher_logits, y, t_preds, maps)))
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
            t_logits, t_preds, t_feats = dense_predict(self.teacher, x, self.teacher_layers)
        s_logits, s_preds, s_feats = dense_predict(self.student, x, self.student_layers)
        student, teacher = predict_losses(s_logits, y, s_preds, maps), predict_losses(t_logits, y, t_preds, maps)
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
