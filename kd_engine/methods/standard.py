"""Standard distillation: the student's task loss plus a weighted sum of registered distillation
terms (logit, feature, embedding), each multiplied per instance by the weighting strategy."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from kd_engine.errors import ConfigError
from kd_engine.losses.terms import LOSSES, TermBatch, TermSetup, TermSpec
from kd_engine.methods.base import Distiller, StepOutput, smoothed_task_loss
from kd_engine.methods.registry import METHODS
from kd_engine.models import feature_taps, layer_shapes
from kd_engine.models.adapters import build_adapter
from kd_engine.weighting import build_weighting


def _taps(model: nn.Module, names: list[str]):
    """`feature_taps`, or nothing when no layer is read (resolving names walks every module)."""
    return feature_taps(model, names) if names else contextlib.nullcontext({})


class Term(nn.Module):
    """One configured term: its loss, weight, layers and (optional) adapter."""

    def __init__(self, name: str, spec: TermSpec, weight: float, params: dict,
                 student_layer: str | None, teacher_layer: str | None, adapter: nn.Module | None,
                 schedule=None):
        super().__init__()
        self.name, self.spec, self.weight, self.params = name, spec, weight, dict(params)
        self.base_weight, self.schedule = weight, schedule  # `weight` is this epoch's (begin_epoch)
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        self.adapter = adapter

    def forward(self, s_logits, t_logits, y, s_feats, t_feats, ids=None) -> torch.Tensor:
        kind = self.spec.inputs
        if kind == "module":  # the owned module reads its own layers (and ids) and computes the loss
            return self.adapter(TermBatch(s_logits, t_logits, y, s_feats, t_feats, ids))
        if kind == "logits":
            return self.spec.fn(s_logits.float(), t_logits.float(), **self.params, reduction="none")
        if kind == "logits_target":
            return self.spec.fn(s_logits.float(), t_logits.float(), y, **self.params, reduction="none")
        s_feat, t_feat = s_feats[self.student_layer].float(), t_feats[self.teacher_layer].float()
        if kind == "adapted_features":
            return self.spec.fn(s_feat, t_feat, self.adapter, **self.params, reduction="none")
        if kind == "embedding":
            return self.spec.fn(s_feat.flatten(1), t_feat.flatten(1), **self.params, reduction="none")
        return self.spec.fn(s_feat, t_feat, **self.params, reduction="none")


def make_adapter(kind: str, s_shape: tuple, t_shape: tuple, field: str, layers: str,
                 params: dict | None = None) -> nn.Module | None:
    """Build the student->teacher adapter (kd_engine.models.adapters), or explain in one line why
    the shapes cannot fit."""
    return build_adapter(kind, s_shape, t_shape, field, layers, params)


@METHODS.register("standard")
class Standard(Distiller):
    bank_mode = "wrapped"  # on a soft-label bank, the teacher's logits come from the bank
    smooths_labels = True

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(student, teacher)
        self.task_weight = cfg.distill.task_weight
        self.label_smoothing = cfg.label_smoothing  # on the task cross-entropy only (not the recorded loss)
        self.weighting = build_weighting(cfg.weighting.strategy, cfg.weighting.params)
        self.terms = nn.ModuleList(self._build_terms(cfg, input_shape))
        owned = [t.adapter for t in self.terms if t.spec.inputs == "module"]
        self.student_layers = sorted({t.student_layer for t in self.terms if t.student_layer}
                                     | {n for m in owned for n in m.student_layers})
        self.teacher_layers = sorted({t.teacher_layer for t in self.terms if t.teacher_layer}
                                     | {n for m in owned for n in m.teacher_layers})
        self.wants_ids = any(m.wants_ids for m in owned)  # e.g. CRD's memory is keyed by instance

    def _build_terms(self, cfg, input_shape) -> list[Term]:
        terms, seen = [], {}
        for index, term_cfg in enumerate(cfg.distill.terms):
            field = f"distill.terms.{index}"
            spec = LOSSES.get(term_cfg.loss, field=f"{field}.loss")
            spec.check_params(term_cfg.params, f"{field}.params")
            count = seen.get(term_cfg.loss, 0)
            seen[term_cfg.loss] = count + 1
            name = term_cfg.loss if count == 0 else f"{term_cfg.loss}_{count}"
            s_layer, t_layer, adapter = term_cfg.student_layer, term_cfg.teacher_layer, None
            if spec.inputs == "module":  # owns a module that picks and checks its layers itself
                adapter = spec.build_module(TermSetup(field, term_cfg.loss, self.student, self.teacher,
                                                      tuple(input_shape), s_layer, t_layer, cfg),
                                            term_cfg.params)
                s_layer = t_layer = None
            elif spec.uses_layers:
                if spec.inputs == "embedding":
                    s_layer = s_layer or getattr(self.student, "embedding_layer", None)
                    t_layer = t_layer or getattr(self.teacher, "embedding_layer", None)
                if not s_layer or not t_layer:
                    raise ConfigError(f"{field}: loss {term_cfg.loss} needs student_layer and teacher_layer")
                s_shape = layer_shapes(self.student, input_shape, [s_layer], f"{field}.student_layer")[s_layer]
                t_shape = layer_shapes(self.teacher, input_shape, [t_layer], f"{field}.teacher_layer")[t_layer]
                layers = f"student {s_layer!r} and teacher {t_layer!r}"
                spec.check_shapes(s_shape, t_shape, field, layers)
                if spec.inputs == "adapted_features":
                    adapter = make_adapter(term_cfg.adapter, s_shape, t_shape, field, layers,
                                           term_cfg.adapter_params)
                elif spec.inputs == "features" and (len(s_shape) != 3 or s_shape[1:] != t_shape[1:]):
                    raise ConfigError(f"{field}: {term_cfg.loss} needs (C, H, W) maps of equal H, W; "
                                      f"{layers} have shapes {s_shape} and {t_shape}")
            elif term_cfg.student_layer or term_cfg.teacher_layer:
                raise ConfigError(f"{field}: loss {term_cfg.loss} works on logits and takes no layers")
            terms.append(Term(name, spec, term_cfg.weight, term_cfg.params, s_layer, t_layer, adapter,
                              term_cfg.weight_schedule))
        if not terms:
            raise ConfigError("distill.terms: method 'standard' needs at least one term "
                              f"(losses: {', '.join(LOSSES.names())})")
        return terms

    def begin_epoch(self, epoch: int, total_epochs: int) -> None:
        """Each term's weight for this epoch from its ``weight_schedule`` (e.g. DKD's warm-up)."""
        for term in self.terms:
            if term.schedule is not None:
                term.weight = term.base_weight * term.schedule.factor(epoch)

    def feature_pairs(self) -> list[tuple[str, str]]:
        """The distilled layer pairs, else (no feature term) the layers both models share."""
        pairs = [(t.student_layer, t.teacher_layer) for t in self.terms if t.student_layer]
        return pairs or super().feature_pairs()

    def forward(self, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor | None = None) -> StepOutput:
        with torch.no_grad(), _taps(self.teacher, self.teacher_layers) as t_feats:
            t_logits = self.teacher(x)
        with _taps(self.student, self.student_layers) as s_feats:
            s_logits = self.student(x)
        student_loss = F.cross_entropy(s_logits.float(), y, reduction="none")
        task_loss = smoothed_task_loss(s_logits, y, student_loss, self.label_smoothing)
        teacher_loss = F.cross_entropy(t_logits.float(), y, reduction="none")
        per_sample: dict[str, torch.Tensor] = {}
        scaled = []
        for term in self.terms:
            value = term(s_logits, t_logits, y, s_feats, t_feats, ids)
            per_sample[f"term_{term.name}"] = value.detach()
            scaled.append(term.weight * value)
        distill = sum(scaled[1:], scaled[0])  # there is at least one term (checked when built)
        weights = self.weighting({"distill_loss": distill.detach(), "teacher_loss": teacher_loss,
                                  "teacher_logits": t_logits, "label": y,
                                  "student_loss": student_loss.detach()})
        if not self.weighting.differentiable:
            weights = weights.detach()
        per_sample.update(student_loss=student_loss.detach(), teacher_loss=teacher_loss,
                          distill_loss=distill.detach(), weight=weights.detach())
        losses = {"task": self.task_weight * task_loss.mean(), "distill": (weights * distill).mean()}
        return StepOutput(s_logits, losses, per_sample, t_logits)
