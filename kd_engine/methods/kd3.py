"""KD³ (paper 12): knowledge distillation from a shifted "web" pool. Every part is a
*reconstruction* from the paper's abstract (no public code):

1. dynamic selection: per batch, keep the top ρ(e) of the pool images by the combined score
   c·(0.5 + 0.5·a) (c = max of the mean of teacher and student probabilities, a = their argmax
   agreement); ρ rises linearly from ``rho_start`` to ``rho_end``; during the first
   ``warmup_epochs`` the score is the teacher's confidence alone (an untrained student would
   corrupt it). ``selection: all`` keeps everything with weight 1 (vanilla KD on the pool),
   ``teacher`` always uses the teacher's confidence. Selected images get ω = c.
2. alignment: Σω‖A(f_S) − f_T‖² on the embeddings (A a linear adapter) and ‖W_S A⁺ − W_T‖²_F
   between the classifiers;
3. MixDistribution: the student's ``mix_layer`` map gets the channel statistics of another
   sample mixed in (λ ~ Beta(α, α)), and InfoNCE (τ = 0.2) pulls the perturbed embedding to the
   clean one.

L = Σω·T²KL/n_sel + align·(L_feat + L_cls) + mix·L_nce. The pool is fixed and unaugmented, so the
teacher's logits and embeddings are cached by instance on first sight. The pool's ground truth
(in-distribution or not) is read only to record it next to each decision.
"""
from __future__ import annotations

from typing import Literal

from annotated_types import Ge, Gt, Interval
import numpy as np
import torch
from torch import nn

from kd_engine.data import build_data
from kd_engine.data.views import step_generator
from kd_engine.errors import ConfigError
from kd_engine.losses.kd3 import (classifier_alignment, info_nce, mix_distribution, selection_scores,
                                  top_fraction)
from kd_engine.losses.logit import kd
from kd_engine.methods.base import StepOutput
from kd_engine.methods.registry import METHODS
from kd_engine.methods.two_view import TwoViewDistiller
from kd_engine.models import feature_taps, layer_shapes
from kd_engine.params import Param, read_params

SELECTIONS = ("all", "teacher", "combined")
DEFAULTS = {"selection": Param("combined", kind=Literal[SELECTIONS]),
            "rho_start": Param(0.3, Interval(gt=0, le=1)), "rho_end": Param(0.8, Interval(gt=0, le=1)),
            "warmup_epochs": Param(5, Ge(0)), "temperature": Param(4.0, Gt(0)), "align": True, "mix": True,
            "mix_layer": "layer1", "mix_alpha": Param(0.1, Gt(0)), "nce_temperature": Param(0.2, Gt(0))}


@METHODS.register("kd3")
class KD3(TwoViewDistiller):
    wants_ids = True

    def __init__(self, cfg, student, teacher, input_shape):
        p = read_params(cfg.distill.params, DEFAULTS, "distill.params", "method kd3")
        super().__init__(student, teacher, {}, cfg.seed)  # KD³'s (original, perturbed) pair
        self.p = p
        self.s_layer, self.t_layer = student.embedding_layer, teacher.embedding_layer
        shapes = layer_shapes(student, input_shape, [self.s_layer, p["mix_layer"]])  # names checked here
        if len(shapes[p["mix_layer"]]) != 3:
            raise ConfigError(f"distill.params.mix_layer: {p['mix_layer']!r} is not a (C, H, W) map")
        s_dim = int(np.prod(shapes[self.s_layer]))
        t_dim = int(np.prod(layer_shapes(teacher, input_shape, [self.t_layer])[self.t_layer]))
        self.adapter = nn.Linear(s_dim, t_dim, bias=False)
        data = build_data(cfg.data, cfg.data.split_seed if cfg.data.split_seed is not None else cfg.seed)
        ids = data.train.ids
        self.row_of = torch.full((int(ids.max()) + 1,), -1, dtype=torch.long)
        self.row_of[ids] = torch.arange(len(ids))
        truth = data.meta.get("in_distribution")
        self.in_dist = torch.tensor(truth, dtype=torch.float32) if truth is not None else torch.full((len(ids),), float("nan"))
        self.t_logits = torch.zeros(len(ids), int(teacher.fc.out_features) if hasattr(teacher, "fc") else 0)
        self.t_feats = torch.zeros(len(ids), t_dim)
        self.cached = torch.zeros(len(ids), dtype=torch.bool)
        self.epoch, self.total_epochs = 0, cfg.epochs

    def begin_epoch(self, epoch: int, total_epochs: int) -> None:
        self.epoch, self.total_epochs = epoch, total_epochs

    def rho(self) -> float:
        span = max(1, self.total_epochs - 1)
        return self.p["rho_start"] + (self.p["rho_end"] - self.p["rho_start"]) * min(self.epoch, span) / span

    def _teacher(self, x, rows):
        """Teacher logits and embeddings, from the per-instance cache when already seen."""
        if not bool(self.cached[rows].all()):
            with torch.no_grad(), feature_taps(self.teacher, [self.t_layer]) as feats:
                logits = self.teacher(x)
            self.t_logits[rows], self.t_feats[rows] = logits.float().cpu(), feats[self.t_layer].flatten(1).float().cpu()
            self.cached[rows] = True
        return self.t_logits[rows].to(x.device), self.t_feats[rows].to(x.device)

    def _mixed_embedding(self, x, step):
        rng = np.random.default_rng([self.view_seed, step, 12])
        perm = torch.from_numpy(rng.permutation(len(x))).to(x.device)
        lam = torch.from_numpy(rng.beta(self.p["mix_alpha"], self.p["mix_alpha"], len(x))).float()
        layer = dict(self.student.named_modules())[self.p["mix_layer"]]
        handle = layer.register_forward_hook(lambda _m, _i, out: mix_distribution(out, perm, lam))
        try:
            with feature_taps(self.student, [self.s_layer]) as feats:
                self.student(x)
        finally:
            handle.remove()
        return feats[self.s_layer].flatten(1)

    def forward(self, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor | None = None) -> StepOutput:
        if ids is None:
            raise ConfigError("method: kd3 needs instance ids (run it through the kdw trainers)")
        rows = self.row_of[ids.cpu()]
        t_logits, t_feat = self._teacher(x, rows)
        with feature_taps(self.student, [self.s_layer]) as feats:
            s_logits = self.student(x)
        s_feat = feats[self.s_layer].flatten(1)
        mode = self.p["selection"]
        teacher_only = mode == "teacher" or (mode == "combined" and self.epoch < self.p["warmup_epochs"])
        score, conf = selection_scores(t_logits, None if teacher_only else s_logits)
        if mode == "all":
            selected, omega = torch.ones_like(score, dtype=torch.bool), torch.ones_like(score)
        else:
            selected, omega = top_fraction(score, self.rho()), conf
        w = omega * selected.float()
        n_sel = selected.float().sum().clamp(min=1.0)
        kd_per = kd(s_logits.float(), t_logits.float(), self.p["temperature"], reduction="none")
        losses = {"distill": (w * kd_per).sum() / n_sel}
        per_sample = {"score": score, "confidence": conf, "selected": selected.float(), "weight": w,
                      "in_distribution": self.in_dist[rows].to(x.device), "kd_loss": kd_per.detach()}
        if self.p["align"]:
            feat_per = (self.adapter(s_feat.float()) - t_feat.float()).pow(2).mean(1)
            losses["feat"] = (w * feat_per).sum() / n_sel
            losses["cls"] = classifier_alignment(self.student.fc.weight, self.adapter.weight, self.teacher.fc.weight)
            per_sample["feat_loss"] = feat_per.detach()
        if self.p["mix"]:
            z_mix = self._mixed_embedding(x, int(self.view_step))
            keep = selected if int(selected.sum()) > 1 else torch.ones_like(selected)
            nce = info_nce(s_feat[keep], z_mix[keep], self.p["nce_temperature"], reduction="none")
            losses["mix"] = nce.mean()
        truth = self.in_dist[rows]
        sel_cpu = selected.cpu()
        precision = truth[sel_cpu].mean() if bool(sel_cpu.any()) else torch.tensor(float("nan"))
        scalars = {"selection_precision": precision.nan_to_num(0.0), "rho": torch.tensor(
            1.0 if mode == "all" else self.rho()), "selected_fraction": selected.float().mean().cpu()}
        return StepOutput(s_logits, losses, per_sample, t_logits,
                          scalars={f"train/{k}": v.float().to(x.device) for k, v in scalars.items()})
