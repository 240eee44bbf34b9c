"""BCKD (ICCV 2023): output distillation for dense detectors that follows their sigmoid protocol.

Per step, the frozen teacher's head outputs at every location (class logits, decoded boxes; from
the teacher pass cache when ``teacher_pass_cache`` is on) and the student's train-mode pass give

  L = task_weight·L_det^S + cls_weight·L_cls + box_weight·L_box, both divided by the batch's
      number of positive locations (the student's FCOS assignment, as its own losses are),
  L_cls = Σ_b Σ_loc Σ_c BCE(σ(s), σ(t)) · |σ(t) − σ(s)|^β                 (``cls_kd: binary``)
  L_box = Σ_b Σ_loc max_c |σ(t_c) − σ(s_c)| · (1 − GIoU(b_S, sg(b_T)))    (``box_kd: giou``)

(`kd_engine.losses.bckd`). ``cls_kd: softmax`` is the inconsistent baseline BCKD replaces:
Hinton KD (T²·KL of softmax(·/T)) over the classes of each location, the same normalisation.
The label weights of the paper's detector are 1 everywhere here (FCOS ignores no location).
Recorded per (image, FPN level): the mean discrepancy weight |σ(t_c) − σ(s_c)|^β of each
class c over the level's locations (``disc_c<label>``), the mean box weight (``box_weight``),
and the level's share of the two terms (``kd_cls``, ``kd_box``, per image before the batch
normalisation).
"""
from __future__ import annotations

from typing import Literal

import torch
from annotated_types import Ge, Gt

from kd_engine.errors import ConfigError
from kd_engine.losses.bckd import binary_discrepancy_kd, discrepancy_weights, giou_box_kd, softmax_kd_dense
from kd_engine.losses.detection_teacher import teacher_losses
from kd_engine.methods.detection_base import (DETECTION_METHODS, DetectionDistiller, DetectionOutput,
                                              level_rows, student_columns, student_pass)
from kd_engine.methods.detection_cache import TeacherPassCache
from kd_engine.methods.registry import METHODS
from kd_engine.params import Param, read_params

DEFAULTS = {"cls_kd": Param("binary", kind=Literal["binary", "softmax", "none"]),
            "box_kd": Param("giou", kind=Literal["giou", "none"]),
            "beta": Param(1.0, Ge(0)), "cls_weight": Param(1.0, Ge(0)), "box_weight": Param(4.0, Ge(0)),
            "temperature": Param(2.0, Gt(0)), "teacher_pass_cache": True}


def _per_level(values: torch.Tensor, sizes: list[int], reduce: str) -> torch.Tensor:
    """(B, N, ...) per location -> (B, L, ...) mean or sum over each level's locations."""
    parts = torch.split(values, sizes, dim=1)
    return torch.stack([p.mean(1) if reduce == "mean" else p.sum(1) for p in parts], 1)


@METHODS.register("bckd")
@DETECTION_METHODS.register("bckd")
class BCKD(DetectionDistiller):
    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(cfg, student, teacher, "bckd")
        if student.kd_kind != "fcos" or teacher.kd_kind != "fcos":
            raise ConfigError(f"student.name / teacher.name: bckd distils FCOS heads location by location "
                              f"(both must be fcos); got student {student.kd_kind}, teacher {teacher.kd_kind}")
        if cfg.distill.terms:
            raise ConfigError("distill.terms: bckd sets its terms in distill.params (cls_kd, box_kd, weights)")
        self.p = read_params(cfg.distill.params, DEFAULTS, "distill.params", "method bckd")
        self.task_weight = cfg.distill.task_weight
        self.teacher_cache = TeacherPassCache() if self.p["teacher_pass_cache"] else None

    def teacher_pass(self, images, targets):
        live = lambda ims, tgs: teacher_losses(self.teacher, ims, tgs)  # noqa: E731
        return live(images, targets) if self.teacher_cache is None else self.teacher_cache(live, images, targets)

    def _terms(self, s_logits, t_logits, s_boxes, t_boxes, box_w) -> dict[str, torch.Tensor]:
        """Each active term per location (B, N): the pure losses with every location as a sample."""
        p, (B, N, K) = self.p, s_logits.shape
        flat_s, flat_t = s_logits.reshape(B * N, 1, K), t_logits.reshape(B * N, 1, K)
        out = {}
        if p["cls_kd"] == "binary" and p["cls_weight"] > 0:
            out["kd_cls"] = binary_discrepancy_kd(flat_s, flat_t, p["beta"], reduction="none")
        elif p["cls_kd"] == "softmax" and p["cls_weight"] > 0:
            out["kd_cls"] = softmax_kd_dense(flat_s, flat_t, p["temperature"], reduction="none")
        if p["box_kd"] == "giou" and p["box_weight"] > 0:
            out["kd_box"] = giou_box_kd(s_boxes.reshape(B * N, 1, 4), t_boxes.reshape(B * N, 1, 4),
                                        box_w.reshape(B * N, 1), reduction="none")
        return {k: v.view(B, N) for k, v in out.items()}

    def forward(self, images, targets) -> DetectionOutput:
        tl = self.teacher_pass(images, targets)
        sp = student_pass(self.student, images, targets)
        p = self.p
        s_logits, t_logits = sp.head["cls_logits"], tl.parts["cls_logits"]
        npos = sp.head["num_foreground"].sum().clamp_min(1).float()
        disc = discrepancy_weights(s_logits, t_logits, p["beta"])  # (B, N, K), detached
        box_w = discrepancy_weights(s_logits, t_logits, 1.0).amax(-1)  # (B, N)
        losses = {"task": self.task_weight * sp.loss}
        per_loc = self._terms(s_logits, t_logits, sp.head["boxes"], tl.parts["boxes"], box_w)
        weights = {"kd_cls": p["cls_weight"], "kd_box": p["box_weight"]}
        for name, value in per_loc.items():
            losses[name] = weights[name] * value.sum() / npos
        scalars = {"train/student_cls": sp.cls_batch, "train/student_box": sp.box_batch,
                   "train/disc_mean": disc.mean(), "train/box_weight_mean": box_w.mean()}
        scalars.update({f"train/term/{k}": v.detach() for k, v in losses.items() if k != "task"})

        def rows() -> dict:
            sizes = [f.shape[-2] * f.shape[-1] for f in sp.features.values()]
            level_disc = _per_level(disc, sizes, "mean")  # (B, L, K)
            cols = {**student_columns(sp), "box_weight": _per_level(box_w, sizes, "mean"),
                    **{f"disc_c{c}": level_disc[..., c] for c in range(1, level_disc.shape[-1])},
                    **{k: _per_level(v.detach(), sizes, "sum") for k, v in per_loc.items()}}
            ids = torch.tensor([t["image_id"] for t in targets])
            return level_rows(ids, list(range(len(sizes))), cols)

        return DetectionOutput(losses, scalars, rows)
