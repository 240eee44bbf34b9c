"""WCBC-IOD (ICCV 2023): incremental detection without forgetting, by distilling the old model's
class structure at two levels: between classes and within classes.

The old model T (trained on task 1, frozen) teaches the new model S, which starts from T's
weights and trains on task 2, where old objects are unlabelled (background to the task loss).
Per object i: feature f_i (the ``layer`` token), logits z_i, and s_i = softmax(z_i[known]/τ)
over the outputs T was taught (the old classes and background; T never learnt the new ones).
Class assignment (`kd_engine.parts.prototypes.assign_classes`, shared by both models): the
label for a labelled (new) object, T's prediction for an unlabelled one where T's probability
of an old class is ≥ ``threshold``; ω_i is that probability. Prototypes μ_c (features) and
π_c (soft predictions) per class with ≥ ``min_count`` objects in the batch, then

    L = L_task + logit_kd·KD_τ(z^S[known], z^T[known]) + feature_mse·‖f^S − f^T‖²/D
        + between·L_BC(μ, π) + within·L_WC(f, μ, z, ω)

(`kd_engine.losses.class_structure`). ``classes: old`` builds the prototypes from the
teacher-assigned (old) objects only, leaving new ones out of L_BC and L_WC (our ablation: the
teacher knows nothing about the new classes' structure). With every weight 0 this is
fine-tuning (the lower bound); fine-tuning on the ``joint`` stage is the upper bound. Reconstruction: the paper's
formulas are not public; the known-output softmax, ω = T's old-class probability (also on
labelled new objects) and the mean reductions are this engine's choices.
Recorded per object: the assignment used and its source, ω, T's and S's predictions and the
per-object KD and L_WC values.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Interval

from kd_engine.data.registry import DATASETS
from kd_engine.errors import ConfigError
from kd_engine.losses.class_structure import between_class, within_class
from kd_engine.losses.logit import kd
from kd_engine.methods.base import Distiller, StepOutput
from kd_engine.methods.incremental_base import FEATURE_LAYER, INCREMENTAL_METHODS, object_pass
from kd_engine.methods.registry import METHODS
from kd_engine.params import Param, read_params
from kd_engine.parts.prototypes import TEACHER, assign_classes, class_prototypes
from kd_engine.weights import fit_state_dict

WEIGHTS = ("logit_kd", "feature_mse", "between", "within")


@METHODS.register("wcbc")
@INCREMENTAL_METHODS.register("wcbc")
class WCBC(Distiller):
    defaults = {"logit_kd": Param(0.0, Ge(0)), "feature_mse": Param(0.0, Ge(0)), "between": Param(1.0, Ge(0)),
                "within": Param(1.0, Ge(0)), "tau": Param(2.0, Gt(0)), "threshold": Param(0.5, Interval(ge=0, le=1)),
                "min_count": Param(2, Ge(1)), "start_from_teacher": True, "layer": FEATURE_LAYER,
                "classes": Param("all", kind=Literal["all", "old"])}

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(student, teacher)
        if getattr(DATASETS.get(cfg.data.name, field="data.name"), "task", "classification") != "incremental":
            raise ConfigError(f"data.name: method {cfg.method} learns classes incrementally; use a class-incremental "
                              f"dataset such as digit_cells_incremental, got {cfg.data.name!r}")
        self.p = read_params(cfg.distill.params, self.defaults, "distill.params", f"method {cfg.method}")
        self.layer = self.p["layer"]
        if self.p["start_from_teacher"]:  # S continues from T: the incremental setting
            fit = fit_state_dict(student, teacher.state_dict())
            if not fit.exact:
                raise ConfigError(f"distill.params.start_from_teacher: the student cannot take the teacher's "
                                  f"weights ({fit.problems()}); give both the same model or set it to false")
            student.load_state_dict(fit.loadable)
        self.known: list[int] = []
        self.background = -1

    def check_data(self, data) -> None:
        meta = data.meta  # the classes the teacher was taught: the old ones (background apart)
        self.known, self.background = list(meta["old"]), int(meta["background"])
        self.num_classes = int(data.num_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        logits, s = object_pass(self.student, x, self.layer)
        with torch.no_grad():
            _, t = object_pass(self.teacher, x, self.layer)
        labels = y.reshape(-1)
        task = F.cross_entropy(s.logits.float(), labels, reduction="none")
        outputs = self.known + [self.background]
        z_s, z_t = s.logits[:, outputs].float(), t.logits[:, outputs].float()
        assignment = assign_classes(labels, t.logits.float().softmax(1), self.known, self.background,
                                    self.p["threshold"])
        losses = {"task": task.mean()}
        zeros = task.new_zeros(len(labels))
        per_object = {"kd": zeros, "within": zeros}
        if self.p["logit_kd"]:
            per_object["kd"] = kd(z_s, z_t, temperature=self.p["tau"], reduction="none")
            losses["logit_kd"] = self.p["logit_kd"] * per_object["kd"].mean()
        if self.p["feature_mse"]:
            losses["feature_mse"] = self.p["feature_mse"] * (s.features - t.features).pow(2).mean()
        classes = assignment.classes
        if self.p["classes"] == "old":  # prototypes of the teacher's classes only (new objects left out)
            classes = torch.where(assignment.source == TEACHER, classes, torch.full_like(classes, -1))
        if self.p["between"] or self.p["within"]:
            losses.update(self.structure_losses(s, t, z_s, z_t, classes, assignment.confidence, per_object))
        per_sample = {"task_loss": task.detach(), "assigned": classes, "source": assignment.source,
                      "omega": assignment.confidence, "teacher_pred": t.logits.argmax(1),
                      "student_pred": s.logits.detach().argmax(1),
                      **{f"{k}_loss": v.detach() for k, v in per_object.items()}}
        return StepOutput(logits, losses, per_sample)

    def structure_losses(self, s, t, z_s, z_t, classes, omega, per_object) -> dict[str, torch.Tensor]:
        """L_BC and L_WC over the assigned objects whose class has a prototype in this batch (each
        weighted term is always returned, 0 in a batch without enough classes)."""
        tau, k = self.p["tau"], self.num_classes
        mu_s, present = class_prototypes(s.features, classes, k, self.p["min_count"])
        mu_t, _ = class_prototypes(t.features, classes, k, self.p["min_count"])
        pi_s, _ = class_prototypes((z_s / tau).softmax(1), classes, k, self.p["min_count"])
        pi_t, _ = class_prototypes((z_t / tau).softmax(1), classes, k, self.p["min_count"])
        losses = {name: z_s.new_zeros(()) for name in ("between", "within") if self.p[name]}
        if self.p["between"] and int(present.sum()) >= 2:
            losses["between"] = self.p["between"] * between_class(mu_s[present], mu_t[present], pi_s[present],
                                                                  pi_t[present], reduction="mean")
        used = (classes >= 0) & present[classes.clamp_min(0)]
        if self.p["within"] and bool(used.any()):
            c = classes[used]
            wc = within_class(s.features[used], t.features[used], mu_s[c], mu_t[c], z_s[used], z_t[used],
                              omega[used], temperature=tau, reduction="none")
            per_object["within"] = per_object["within"].masked_scatter(used, wc)
            losses["within"] = self.p["within"] * wc.mean()
        return losses
