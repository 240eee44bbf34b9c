"""CS-MTL-KD: one multi-task teacher into a multi-task student, with the Cauchy–Schwarz divergence
and intra- plus inter-task "alternative" matching (reconstruction).

The paper distils a dense multi-task predictor from a single multi-task teacher instead of one
teacher per task, and replaces KL by the Cauchy–Schwarz divergence D_CS, which is symmetric and
ignores the scale of its arguments. Its abstract leaves where D_CS is applied and what the
alternative match is; here (reconstruction):

- every task output is compared along the axis that makes it a distribution: segmentation logits
  per pixel over the classes (``pixel_cs`` / ``pixel_kd``), each continuous map (depth, edge
  logits) per channel over the H·W positions (``channel_cs`` / ``channel_kd``), both at the
  temperature T;
- intra-task: D(S_t, T_t) for every task t the student and teacher share;
- inter-task (``alt_weight`` γ > 0): a 1×1 adapter A_tt' maps the student's output of task t to
  the shape of the teacher's output of task t', and γ·D(A_tt'(S_t), T_t') is added for every
  ordered pair t ≠ t', so each student head also learns what the teacher knows about the other
  tasks;
- ``match: alternate`` uses intra-task terms on even steps and inter-task terms on odd ones
  (the variant), ``every_step`` uses both at every step.

L = task loss + weight · Σ_t [D(S_t, T_t) + γ Σ_{t'≠t} D(A_tt'(S_t), T_t')], per image.
``divergence: kl`` swaps D_CS for the temperature KL (with T², as in Hinton's KD): the KL
baseline on the same axes. Recorded per image: ``intra_<task>`` and ``inter_<task>`` (the
inter-task terms whose target is that task), ``distill_loss`` and the task losses.
"""
from __future__ import annotations

from typing import Literal

import torch
from annotated_types import Ge, Gt
from torch import nn

from kd_engine.errors import ConfigError
from kd_engine.losses.dense import channel_cs, channel_kd, pixel_cs, pixel_kd
from kd_engine.methods.base import Distiller, StepOutput
from kd_engine.methods.dense import DENSE_METHODS, _per_image, dense_predict, predict_losses
from kd_engine.methods.registry import METHODS
from kd_engine.params import Param, read_params

# (divergence, axis) -> per-image loss of (B, C, H, W) student and teacher maps
DIVERGENCES = {("cs", "pixel"): pixel_cs, ("cs", "spatial"): channel_cs,
               ("kl", "pixel"): pixel_kd, ("kl", "spatial"): channel_kd}
DEFAULTS = {"divergence": Param("cs", kind=Literal["cs", "kl"]), "temperature": Param(1.0, Gt(0)),
            "weight": Param(1.0, Ge(0)), "alt_weight": Param(0.0, Ge(0)),
            "match": Param("every_step", kind=Literal["every_step", "alternate"])}


def task_maps(logits: torch.Tensor, preds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every task output as a (B, C, H, W) map: ``seg`` (the class logits) and each continuous
    output (B, H, W) with a channel axis added."""
    return {"seg": logits, **{name: value.unsqueeze(1) for name, value in preds.items()}}


def axis_of(task: str) -> str:
    """Segmentation is compared per pixel over classes, continuous maps per channel over space."""
    return "pixel" if task == "seg" else "spatial"


@METHODS.register("cs_mtl_kd")
@DENSE_METHODS.register("cs_mtl_kd")
class CSMTLKD(Distiller):
    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(student, teacher)
        if cfg.distill.terms:
            raise ConfigError("distill.terms: method cs_mtl_kd has its own losses (set distill.params); "
                              "remove the terms")
        self.p = read_params(cfg.distill.params, DEFAULTS, "distill.params", "method cs_mtl_kd")
        self.task_weight = cfg.distill.task_weight
        s_out, t_out = set(getattr(student, "dense_outputs", {})), set(getattr(teacher, "dense_outputs", {}))
        self.tasks = ["seg"] + sorted(s_out & t_out)
        with torch.no_grad():
            probe = torch.zeros(1, *input_shape)
            modes = student.training
            student.eval()
            channels = {t: m.shape[1] for t, m in task_maps(*dense_predict(student, probe)[:2]).items()}
            student.train(modes)
        # A_tt': the student's output of task t mapped to the channels of the teacher's task t'
        self.adapters = nn.ModuleDict({f"{t}_to_{u}": nn.Conv2d(channels[t], channels[u], 1)
                                       for t in self.tasks for u in self.tasks if t != u}
                                      if self.p["alt_weight"] > 0 else {})
        self.step = 0

    def after_step(self, step: int, epoch: int) -> None:
        self.step = step + 1

    def _divergence(self, task: str, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        fn = DIVERGENCES[(self.p["divergence"], axis_of(task))]
        return fn(student.float(), teacher.float(), temperature=self.p["temperature"], reduction="none")

    def forward(self, x: torch.Tensor, y: torch.Tensor, maps: dict | None = None) -> StepOutput:
        with torch.no_grad():
            t_logits, t_preds, _ = dense_predict(self.teacher, x)
        s_logits, s_preds, _ = dense_predict(self.student, x)
        student, teacher = predict_losses(s_logits, y, s_preds, maps), predict_losses(t_logits, y, t_preds, maps)
        s_maps, t_maps = task_maps(s_logits, s_preds), task_maps(t_logits, t_preds)
        alternate = self.p["match"] == "alternate" and bool(self.adapters)
        intra_on = not alternate or self.step % 2 == 0
        inter_on = bool(self.adapters) and (not alternate or self.step % 2 == 1)
        per_sample: dict[str, torch.Tensor] = {}
        distill = torch.zeros_like(student["total"])
        for task in self.tasks:
            intra = self._divergence(task, s_maps[task], t_maps[task])
            per_sample[f"intra_{task}"] = intra.detach()
            if intra_on:
                distill = distill + intra
        if self.adapters:
            for target in self.tasks:
                inter = sum(self._divergence(target, self.adapters[f"{t}_to_{target}"](s_maps[t]), t_maps[target])
                            for t in self.tasks if t != target)
                per_sample[f"inter_{target}"] = inter.detach()
                if inter_on:
                    distill = distill + self.p["alt_weight"] * inter
        distill = self.p["weight"] * distill
        per_sample.update(_per_image("student", student), **_per_image("teacher", teacher),
                          distill_loss=distill.detach())
        losses = {"task": self.task_weight * student["total"].mean(), "distill": distill.mean()}
        return StepOutput(s_logits, losses, per_sample, t_logits)
