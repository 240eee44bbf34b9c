"""GiftNet (reconstruction): image harmonization with global guidance and foreground–background
relation distillation.

A composite pastes a foreground lit differently from its background. The network (model
``film_unet``) re-lights the foreground; GiftNet adds two things, both inferred from the paper's
abstract and introduction (its model code is not public):

- global guidance: FiLM at the bottleneck, conditioned on the background's average feature (a
  model setting, ``student.params.film``);
- relation distillation: the same encoder reads the *real* image (under stop-gradient: the
  teacher path), and the relation of each foreground position to 4 background prototypes
  (quadrant averages), R[i, k] = cos(F_i, b_k), is a target for the composite's transformed
  features F̃: L_rel = mean |R(F̃_comp) − sg(R(E(I_real)))| over foreground positions.

L = MSE + fg_weight · fMSE + relation_weight · L_rel, per image. With ``relation_weight: 0`` the
method is the plain harmonization network (the ablation arms). There is no separate teacher
model: the "teacher" is the network's own encoder on the real image, so ``teacher`` must be unset.
Recorded per image: ``reconstruction``, ``fmse`` (training fMSE), ``relation`` (L_rel, also
computed, not optimised, when its weight is 0).
"""
from __future__ import annotations

import torch
from annotated_types import Ge

from kd_engine.errors import ConfigError
from kd_engine.losses.harmonization import foreground_mse, harmonization_loss, relation_l1, relations
from kd_engine.methods.base import Distiller, StepOutput
from kd_engine.methods.registry import HARMONIZATION_METHODS, METHODS
from kd_engine.params import Param, read_params

DEFAULTS = {"relation_weight": Param(1.0, Ge(0)), "fg_weight": Param(1.0, Ge(0))}
TAPS = ("encoder", "transformed")


@HARMONIZATION_METHODS.register("giftnet")
@METHODS.register("giftnet")
class GiftNet(Distiller):
    needs_teacher = False

    def __init__(self, cfg, student, teacher, input_shape):
        if teacher is not None:
            raise ConfigError("teacher: method giftnet distils from its own encoder on the real image; "
                              "remove the teacher section")
        super().__init__(student, None)
        missing = [name for name in TAPS if name not in getattr(student, "feature_layers", [])]
        if missing:
            raise ConfigError(f"student.name: method giftnet needs a model with layers {list(TAPS)} "
                              f"(film_unet), got {cfg.student.name!r}")
        self.p = read_params(cfg.distill.params, DEFAULTS, "distill.params", "method giftnet")

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        mask = x[:, 3]
        out, r_comp, fg = relations(self.student, x, "transformed")
        with torch.no_grad():  # the real-image path: a target only (stop-gradient)
            _, r_real, _ = relations(self.student, torch.cat([y, mask.unsqueeze(1)], dim=1), "encoder")
        reconstruction = harmonization_loss(out, y, mask, self.p["fg_weight"], reduction="none")
        relation = relation_l1(r_comp, r_real, fg, reduction="none")
        per_sample = {"reconstruction": reconstruction.detach(), "relation": relation.detach(),
                      "fmse": foreground_mse(out.detach(), y, mask, reduction="none")}
        losses = {"task": reconstruction.mean()}
        if self.p["relation_weight"] > 0:
            losses["distill"] = self.p["relation_weight"] * relation.mean()
        return StepOutput(out, losses, per_sample, None)
