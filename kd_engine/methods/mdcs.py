"""MDCS (Zhao et al., ICCV 2023; paper 16): more diverse experts with consistency self-distillation
for long-tailed recognition.

Every expert i of a multi-expert student (model ``experts``) trains on its own logit adjustment
z̃_i = z_i + λ_i·log π (π: the training split's class frequencies), with CE on a weak and a
strong view. Consistency self-distillation pulls each expert's strong view toward its own
(detached) weak view, KL_i = T²·KL(sg(softmax(z̃_i^w/T)) ‖ softmax(z̃_i^s/T)), only on the
instances that expert classifies correctly on the weak view (confident instance sampling, CIS,
from the *adjusted* weak logits, decided per expert). Per batch:

    L = Σ_i [CE(z̃_i^w, y) + CE(z̃_i^s, y)] + w_t · (1/B) Σ_b Σ_i m_{b,i} KL_{b,i},
    w_t = kl_weight · min((epoch + 1) / ramp_epochs, 1).

The prediction averages the unadjusted expert logits. Recorded per instance: ``confident_e<i>``
(CIS flag of expert i), ``keep_count`` (experts that kept the instance), ``expert`` (the expert
with the lowest unadjusted weak-view CE, i.e. the one that fits the instance best), ``weight``
(w_t · keep_count / E: the mean over experts of the weight its KL term got) and
``consistency`` (Σ_i m_i·KL_i before w_t).
"""
from __future__ import annotations

from typing import Annotated

from annotated_types import Ge, Gt
import torch
import torch.nn.functional as F

from kd_engine.data import build_data
from kd_engine.data.augment import strong_view, weak_view
from kd_engine.errors import ConfigError
from kd_engine.losses.logit import kd
from kd_engine.losses.longtail import adjust_logits, log_prior
from kd_engine.methods.base import Distiller, StepOutput
from kd_engine.params import Param, check, read_params
from kd_engine.methods.registry import METHODS

DEFAULTS = {"lambdas": [-0.5, 1.0, 2.5], "kl_weight": Param(0.6, Ge(0)), "ramp_epochs": Param(10, Ge(1)),
            "temperature": Param(1.0, Gt(0)), "cis": True, "shift": Param(1, Ge(0)),
            "noise": Param(0.15, Ge(0)), "cutout": Param(3, Ge(0)),
            "contrast": Param([0.5, 1.5], kind=tuple[Annotated[float, Ge(0)], float])}


def cis_mask(adjusted_weak: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(E, B, C) adjusted weak logits -> (E, B) float mask: expert e classifies b correctly."""
    return (adjusted_weak.argmax(dim=-1) == y.unsqueeze(0)).float()


def consistency_terms(adjusted_strong: torch.Tensor, adjusted_weak: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """(E, B) per-expert, per-instance T²·KL(sg(p_weak) ‖ p_strong)."""
    e, b, c = adjusted_strong.shape
    kl = kd(adjusted_strong.reshape(e * b, c), adjusted_weak.reshape(e * b, c).detach(),
            temperature=temperature, reduction="none")
    return kl.view(e, b)


@METHODS.register("mdcs")
class MDCS(Distiller):
    needs_teacher = False

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(student, None)
        if teacher is not None:
            raise ConfigError("teacher: method 'mdcs' distils each expert from itself; remove the teacher section")
        if not hasattr(student, "expert_logits"):
            raise ConfigError(f"student.name: method 'mdcs' needs a multi-expert student (model experts), "
                              f"got {cfg.student.name!r}")
        p = read_params(cfg.distill.params, DEFAULTS, "distill.params", "method mdcs")
        experts = len(student.experts)
        check(len(p["lambdas"]) == experts, "distill.params.lambdas",
              f"one λ per expert: the student has {experts} expert(s), got {len(p['lambdas'])} value(s)")
        check(p["contrast"][0] <= p["contrast"][1], "distill.params.contrast",
              f"must be [low, high] with 0 <= low <= high, got {p['contrast']}")
        self.p = p
        self.lambdas = [float(v) for v in p["lambdas"]]
        data = build_data(cfg.data, cfg.seed)  # the training split's class counts give log π
        counts = torch.bincount(data.train.y, minlength=data.num_classes)
        self.register_buffer("prior_log", log_prior(counts), persistent=False)
        self.consistency_weight = 0.0

    def begin_epoch(self, epoch: int, total_epochs: int) -> None:
        self.consistency_weight = self.p["kl_weight"] * min((epoch + 1) / self.p["ramp_epochs"], 1.0)

    def adjusted(self, logits: torch.Tensor) -> torch.Tensor:
        """(E, B, C) -> each expert's z̃_i = z_i + λ_i·log π."""
        return torch.stack([adjust_logits(z, self.prior_log, lam) for z, lam in zip(logits, self.lambdas)])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        p = self.p
        weak = self.student.expert_logits(weak_view(x, p["shift"])).float()
        strong = self.student.expert_logits(
            strong_view(x, p["shift"], p["noise"], p["cutout"], tuple(p["contrast"]))).float()
        adj_weak, adj_strong = self.adjusted(weak), self.adjusted(strong)
        e, b, c = weak.shape
        flat_y = y.repeat(e)
        ce = (F.cross_entropy(adj_weak.reshape(e * b, c), flat_y, reduction="none")
              + F.cross_entropy(adj_strong.reshape(e * b, c), flat_y, reduction="none")).view(e, b)
        mask = cis_mask(adj_weak, y) if p["cis"] else torch.ones(e, b, device=x.device)
        kl = consistency_terms(adj_strong, adj_weak, p["temperature"])
        consistency = (mask * kl).sum(dim=0)
        logits = weak.mean(dim=0)
        plain_ce = F.cross_entropy(weak.reshape(e * b, c), flat_y, reduction="none").view(e, b)
        per_sample = {"student_loss": F.cross_entropy(logits, y, reduction="none").detach(),
                      "expert": plain_ce.argmin(dim=0).float(), "keep_count": mask.sum(dim=0),
                      "weight": self.consistency_weight * mask.mean(dim=0),
                      "consistency": consistency.detach(), "ce_adjusted": ce.sum(dim=0).detach()}
        per_sample.update({f"confident_e{i}": mask[i] for i in range(e)})
        losses = {"task": ce.sum(dim=0).mean(), "consistency": self.consistency_weight * consistency.mean()}
        return StepOutput(logits, losses, per_sample)
