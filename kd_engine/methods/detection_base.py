"""What detection methods share: their registry, the student's training pass, per-instance rows,
and ``scratch`` for detectors.

A detection method is a ``Distiller`` whose ``forward(images, targets)`` returns a
``DetectionOutput``: named losses summed into the objective, detached per-step scalars, and a
callable giving the per-instance rows (built only when the run records instances). Detection
methods are looked up in ``DETECTION_METHODS``; distillers that only make sense for detectors
(``zhang_ma``) are also in ``METHODS`` so name checks and listings see them.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from kd_engine.errors import ConfigError
from kd_engine.losses.detection_teacher import TeacherLosses, teacher_losses
from kd_engine.methods.base import Distiller
from kd_engine.registry import Registry

DETECTION_METHODS: Registry = Registry("detection method")


@dataclass
class DetectionOutput:
    losses: dict[str, Tensor]
    scalars: dict[str, Tensor] = field(default_factory=dict)  # logged per step under their full key
    rows: Callable[[], dict[str, np.ndarray]] | None = None

    @property
    def total(self) -> Tensor:
        return sum(self.losses.values())


@dataclass
class StudentPass:
    """The student's task loss as torchvision defines it, per-image parts where the detector
    gives them (single-stage; None for Faster R-CNN's sampled losses), and its FPN features."""

    loss: Tensor
    cls: Tensor | None
    box: Tensor | None
    cls_batch: Tensor
    box_batch: Tensor
    features: "OrderedDict[str, Tensor]"
    # the head's raw outputs at every location where the detector gives them (FCOS: cls_logits
    # (B, N, K), decoded boxes (B, N, 4)) and the foreground count (B,), for output distillation
    head: dict[str, Tensor] = field(default_factory=dict)


def _single_stage(foreground_norm: bool):
    """RetinaNet averages per-image losses over the batch; FCOS divides the batch's summed
    losses by the batch's foreground count. Either way one pass gives per-image losses too."""

    def run(model: nn.Module, images, targets) -> StudentPass:
        tl = teacher_losses(model, images, targets, grad=True)
        if foreground_norm:
            n = tl.num_foreground.clamp_min(1).to(tl.cls.dtype)
            denom = tl.num_foreground.sum().clamp_min(1).to(tl.cls.dtype)
            cls, box = (tl.cls * n).sum() / denom, (tl.box * n).sum() / denom
        else:
            cls, box = tl.cls.mean(), tl.box.mean()
        head = {k: tl.parts[k] for k in ("cls_logits", "boxes") if k in tl.parts}
        return StudentPass(cls + box, tl.cls.detach(), tl.box.detach(), cls.detach(), box.detach(),
                           tl.features, {**head, "num_foreground": tl.num_foreground})

    return run


def _two_stage(model: nn.Module, images, targets) -> StudentPass:
    """torchvision's own train-mode losses; the FPN maps are caught on the way by a hook."""
    captured: "OrderedDict[str, Tensor]" = OrderedDict()
    handle = model.backbone.register_forward_hook(lambda module, args, out: captured.update(out))
    try:
        parts = model(images, targets)
    finally:
        handle.remove()
    cls = parts["loss_classifier"] + parts["loss_objectness"]
    box = parts["loss_box_reg"] + parts["loss_rpn_box_reg"]
    return StudentPass(cls + box, None, None, cls.detach(), box.detach(), captured)


STUDENT_PASSES = {"retinanet": _single_stage(False), "fcos": _single_stage(True),
                  "fasterrcnn": _two_stage}


def student_pass(model: nn.Module, images, targets) -> StudentPass:
    return STUDENT_PASSES[model.kd_kind](model, images, targets)


def _np(value: Tensor | None, shape: tuple[int, ...]) -> np.ndarray:
    """(B,) or (B, L) tensor -> flat float array over (image, level) rows; None -> NaN."""
    if value is None:
        return np.full(int(np.prod(shape)), np.nan)
    value = value.detach().float().cpu()
    if value.dim() == 1 and len(shape) == 2:
        value = value[:, None].expand(shape)
    return value.reshape(-1).numpy()


def level_rows(image_ids: Tensor, levels: list[int], columns: Mapping[str, Tensor | None]) -> dict:
    """One row per (image, level); (B,) columns repeat over the levels, (B, L) ones are per row."""
    B, L = len(image_ids), len(levels)
    out = {"instance_id": np.repeat(image_ids.cpu().numpy(), L),
           "level": np.tile(np.asarray(levels), B), "label": np.full(B * L, -1)}
    out.update({k: _np(v, (B, L)) for k, v in columns.items()})
    return out


def gt_rows(image_ids: Tensor, tl: TeacherLosses, used: list[Tensor], raw: list[Tensor] | None) -> dict:
    """One row per ground-truth box (per_gt granularity): its box, class, matched anchors, the
    teacher's losses on it and its weight; level -1 ("all")."""
    counts = [g.boxes.shape[0] for g in tl.per_gt]
    cat = lambda ts: torch.cat([t.detach().float().reshape(-1).cpu() for t in ts]).numpy()  # noqa: E731
    boxes = torch.cat([g.boxes.detach().float().reshape(-1, 4).cpu() for g in tl.per_gt]).numpy()
    cls, box = cat([g.cls for g in tl.per_gt]), cat([g.box for g in tl.per_gt])
    out = {"instance_id": np.repeat(image_ids.cpu().numpy(), counts),
           "level": np.full(sum(counts), -1), "gt": np.concatenate([np.arange(c) for c in counts]),
           "label": cat([g.labels for g in tl.per_gt]).astype(np.int64),
           "num_anchors": cat([g.num_anchors for g in tl.per_gt]),
           "x0": boxes[:, 0], "y0": boxes[:, 1], "x1": boxes[:, 2], "y1": boxes[:, 3],
           "teacher_cls": cls, "teacher_box": box, "teacher_loss": cls + box, "weight": cat(used)}
    if raw is not None:
        out["aid_weight"] = cat(raw)
    return out


def student_columns(sp: StudentPass) -> dict[str, Tensor | None]:
    total = None if sp.cls is None else sp.cls + sp.box
    return {"student_loss": total, "student_cls": sp.cls, "student_box": sp.box}


def teacher_columns(tl: TeacherLosses, index: list[int]) -> dict[str, Tensor]:
    cls, box = tl.cls_level[:, index], tl.box_level[:, index]
    out = {"teacher_cls": cls, "teacher_box": box, "teacher_loss": cls + box,
           "num_foreground": tl.num_foreground}
    if "top_background_score" in tl.parts:  # flags the teacher's clutter false positives
        out["teacher_top_bg"] = tl.parts["top_background_score"]
    return out


class DetectionDistiller(Distiller):
    """A distiller over torchvision detectors (built from the ``retinanet``/``fcos``/
    ``fasterrcnn`` models); refuses classifiers with a one-line ConfigError."""

    weighting = None

    def __init__(self, cfg, student: nn.Module, teacher: nn.Module | None, name: str):
        for role, model in (("student", student), ("teacher", teacher)):
            if model is not None and getattr(model, "kd_kind", None) not in STUDENT_PASSES:
                raise ConfigError(f"method: {name} trains detectors; {role}.name must be one of "
                                  f"{', '.join(STUDENT_PASSES)} with a detection dataset "
                                  "(data.name: scenes or coco)")
        super().__init__(student, teacher)

    def weighting_state(self) -> dict:
        return self.weighting.state_dict() if self.weighting is not None else {}

    def load_weighting_state(self, state: dict) -> None:
        if self.weighting is not None and state:
            self.weighting.load_state_dict(state)


@DETECTION_METHODS.register("scratch")
class DetectionScratch(DetectionDistiller):
    """The detector alone on its labels (torchvision's own train-mode losses). A teacher, when
    given, is only observed: its per-(image, level) losses are recorded next to the student's."""

    needs_teacher = False

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(cfg, student, teacher, "scratch")

    def forward(self, images, targets) -> DetectionOutput:
        sp = student_pass(self.student, images, targets)
        scalars = {"train/student_cls": sp.cls_batch, "train/student_box": sp.box_batch}
        ids = torch.tensor([t["image_id"] for t in targets])
        if self.teacher is None:
            rows = lambda: level_rows(ids, [-1], student_columns(sp))  # noqa: E731
        else:
            tl = teacher_losses(self.teacher, images, targets)
            index = list(range(len(tl.levels)))
            scalars["train/teacher_loss"] = tl.total.mean().detach()
            rows = lambda: level_rows(ids, index, {**teacher_columns(tl, index),  # noqa: E731
                                                   **student_columns(sp)})
        return DetectionOutput({"task": sp.loss}, scalars, rows)


__all__ = ["DETECTION_METHODS", "DetectionDistiller", "DetectionOutput", "DetectionScratch",
           "StudentPass", "gt_rows", "level_rows", "student_columns", "student_pass",
           "teacher_columns"]
