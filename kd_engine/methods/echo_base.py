"""Methods of per-azimuth room prediction (``ECHO_METHODS``, the ``echo_depth`` task's registry):
``scratch``, ``direct_kd`` and the base every echo distiller shares.

A model returns (B, 1 + K, A) (`kd_engine.models.echo_cnn`): depth per azimuth, then K class
logits. The task loss of one room is the mean over azimuths of the squared depth error (m²)
plus the mean cross-entropy of the wall/obstacle labels, one value per room.

``direct_kd`` is the naive cross-modal feature KD (the baseline SAM argues against): the
student's own feature map, indexed by echo *time* (``student_layer``, (B, C_S, N)), is resized
by linear interpolation to the teacher's A azimuth positions, mapped to the teacher's width by
a 1×1 convolution and matched to the teacher's azimuth-indexed map (``teacher_layer``) by mean
squared error, weighted by ``weight``. Position n of the resized map is echo time, not azimuth:
the two axes are **not** aligned, on purpose (it is the baseline as described, not fixed here).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from annotated_types import Ge
from torch import nn

from kd_engine.data.registry import DATASETS
from kd_engine.errors import ConfigError
from kd_engine.losses.alignment import aligned_feature_mse
from kd_engine.methods.base import Distiller, StepOutput
from kd_engine.methods.registry import METHODS
from kd_engine.models import feature_taps
from kd_engine.models.taps import layer_shapes
from kd_engine.params import Param, read_params
from kd_engine.registry import Registry

ECHO_METHODS: Registry = Registry("echo method")


def room_losses(output: torch.Tensor, labels: torch.Tensor, depth: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per room: ``depth_mse`` (mean over azimuths of (d̂ − d)², m²), ``ce`` (mean cross-entropy
    of the labels) and their sum ``total``."""
    if output.dim() != 3 or output.shape[0] != labels.shape[0] or output.shape[2] != labels.shape[1]:
        raise ValueError(f"output must be (B, 1 + K, A) for labels {tuple(labels.shape)}, got {tuple(output.shape)}")
    out = output.float()
    depth_mse = (out[:, 0] - depth.float()).pow(2).mean(1)
    ce = F.cross_entropy(out[:, 1:], labels, reduction="none").mean(1)
    return {"depth_mse": depth_mse, "ce": ce, "total": depth_mse + ce}


class EchoDistiller(Distiller):
    """Student (and teacher) passes with the layers a method taps, the task loss and the
    method's distillation terms (``distill``) in one `StepOutput`; ``room_values`` gives the same
    terms per room at evaluation (the task records them)."""

    needs_teacher = False
    student_layers: list[str] = []
    teacher_layers: list[str] = []

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(student, teacher)
        if getattr(DATASETS.get(cfg.data.name, field="data.name"), "task", "classification") != "echo_depth":
            raise ConfigError(f"data.name: method {cfg.method} predicts per-azimuth room maps; use an echo dataset "
                              f"such as room_echoes, got {cfg.data.name!r}")

    def passes(self, x: torch.Tensor):
        """(student output, student taps, teacher output or None, teacher taps)."""
        with feature_taps(self.student, self.student_layers, "student") as s_feats:
            out = self.student(x)
        t_out, t_feats = None, {}
        if self.teacher is not None:
            with torch.no_grad(), feature_taps(self.teacher, self.teacher_layers, "teacher") as t_feats:
                t_out = self.teacher(x)
        return out, dict(s_feats), t_out, dict(t_feats)

    def distill(self, s_feats: dict, t_feats: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(weighted scalar losses, per-room values) of the method's terms; none by default."""
        return {}, {}

    def forward(self, x, y, depth) -> StepOutput:
        out, s_feats, t_out, t_feats = self.passes(x)
        task = room_losses(out, y, depth)
        per_sample = {"student_loss": task["total"].detach(), "depth_mse": task["depth_mse"].detach(),
                      "ce": task["ce"].detach()}
        if t_out is not None:
            per_sample["teacher_loss"] = room_losses(t_out, y, depth)["total"]
        losses, values = self.distill(s_feats, t_feats) if t_out is not None else ({}, {})
        per_sample.update({k: v.detach() for k, v in values.items()})
        return StepOutput(out, {"task": task["total"].mean(), **losses}, per_sample, t_out)

    @torch.no_grad()
    def room_values(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The method's per-room distillation values on evaluation rooms (eval mode by the caller)."""
        if self.teacher is None or not self.student_layers:
            return {}
        _, s_feats, _, t_feats = self.passes(x)
        return self.distill(s_feats, t_feats)[1]


@ECHO_METHODS.register("scratch")
class EchoScratch(EchoDistiller):
    """The student alone on the task loss (also trains the panorama teacher); a teacher, if given,
    is only observed (its loss recorded per room)."""


@METHODS.register("direct_kd")
@ECHO_METHODS.register("direct_kd")
class DirectKD(EchoDistiller):
    needs_teacher = True
    defaults = {"student_layer": "stage2", "teacher_layer": "layer2", "weight": Param(1.0, Ge(0))}

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(cfg, student, teacher, input_shape)
        self.p = read_params(cfg.distill.params, self.defaults, "distill.params", f"method {cfg.method}")
        self.student_layers, self.teacher_layers = [self.p["student_layer"]], [self.p["teacher_layer"]]
        s_shape = layer_shapes(student, input_shape, self.student_layers, "distill.params.student_layer")
        t_shape = layer_shapes(teacher, input_shape, self.teacher_layers, "distill.params.teacher_layer")
        (s_shape,), (t_shape,) = s_shape.values(), t_shape.values()
        if len(s_shape) != 2 or len(t_shape) != 2:
            raise ConfigError(f"distill.params: direct_kd matches 1-D maps (C, N); got student {s_shape} and "
                              f"teacher {t_shape}")
        self.positions = t_shape[1]
        self.adapter = nn.Conv1d(s_shape[0], t_shape[0], 1)

    def distill(self, s_feats, t_feats):
        resized = F.interpolate(s_feats[self.p["student_layer"]], size=self.positions, mode="linear",
                                align_corners=False)  # echo time stretched onto the azimuth axis: misaligned
        per_room = aligned_feature_mse(self.adapter(resized), t_feats[self.p["teacher_layer"]], reduction="none")
        return {"direct_kd": self.p["weight"] * per_room.mean()}, {"direct_loss": per_room}
