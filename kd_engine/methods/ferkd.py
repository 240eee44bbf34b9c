"""FerKD (paper 15) on FKD's teacher soft-label bank (kd_engine/teacher_bank.py).

Each step draws one stored crop per image (two for SelfMix), replays exactly its box and flip,
and minimises the soft cross-entropy -Σ_c t_c log softmax(z_S)_c (T = 1) to the crop's target t:

* ``labels: teacher`` (FKD): t = the teacher's softmax for that crop (top-k quantised when
  ``teacher_bank.topk`` is set);
* ``calibrate: true`` (FerKD, *reconstruction*): per image, crops with p_T[y] < ``tau_low`` or in
  the bottom ``bottom_frac`` of that image's K crops by p_T[y] get t = (1-ε)·onehot(y) + ε/C;
* ``labels: hard``: t = onehot(y) on the same crops (the hard-label baseline);
* ``selfmix`` (probability per image): CutMix of two different crops of the *same* image, the
  target mixed by area, t = λ·t_a + (1-λ)·t_b.

Recorded per instance: the view used (``bank_view``), the teacher's p_T[y] on it
(``bank_conf_y``), whether it was relabelled (``calibrated``), the weight, and SelfMix's λ and
second view (``mix_lam``, ``mix_view`` = -1 when not mixed).
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from annotated_types import Gt

from kd_engine.errors import ConfigError
from kd_engine.methods.base import Distiller, StepOutput
from kd_engine.methods.registry import METHODS
from kd_engine.params import Probability
from kd_engine.registry import construct
from kd_engine.teacher_bank import apply_views
from kd_engine.weighting import build_weighting


def calibration_mask(conf: torch.Tensor, tau_low: float, bottom_frac: float) -> torch.Tensor:
    """(N, K) bool: crop k of image n is relabelled when conf[n, k] = p_T[y] < tau_low or it is
    among the floor(bottom_frac·K) least confident crops of image n (ties: lower index first)."""
    bottom = int(math.floor(bottom_frac * conf.shape[1] + 1e-9))
    ranks = torch.argsort(torch.argsort(conf, dim=1, stable=True), dim=1)
    return (conf < tau_low) | (ranks < bottom)


def smoothed_onehot(y: torch.Tensor, num_classes: int, epsilon: float) -> torch.Tensor:
    return (1.0 - epsilon) * F.one_hot(y, num_classes).float() + epsilon / num_classes


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """-Σ_c target_c log softmax(logits)_c per sample."""
    from kd_engine.losses._reduce import reduce

    return reduce(-(target * F.log_softmax(logits.float(), dim=1)).sum(1), reduction)


def cutmix_boxes(lam: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 4) integer boxes (y0, x0, y1, x1) of area ≈ (1-λ)·H·W centred at (cy, cx), clipped."""
    cut = torch.sqrt(1.0 - lam)
    ch, cw = (cut * height).round(), (cut * width).round()
    y0, y1 = (cy - ch / 2).round().clamp(0, height), (cy + ch / 2).round().clamp(0, height)
    x0, x1 = (cx - cw / 2).round().clamp(0, width), (cx + cw / 2).round().clamp(0, width)
    return torch.stack([y0, x0, y1, x1], dim=1).long()


def self_mix(xa: torch.Tensor, xb: torch.Tensor, ta: torch.Tensor, tb: torch.Tensor, boxes: torch.Tensor):
    """Paste xb's box into xa; the target is mixed by the pasted area. Returns (x, t, λ)."""
    height, width = xa.shape[-2:]
    rows = torch.arange(height, device=xa.device).view(1, -1, 1)
    cols = torch.arange(width, device=xa.device).view(1, 1, -1)
    b = boxes.to(xa.device).view(-1, 4, 1, 1)
    inside = (rows >= b[:, 0]) & (rows < b[:, 2]) & (cols >= b[:, 1]) & (cols < b[:, 3])  # (B, H, W)
    lam = 1.0 - inside.flatten(1).float().mean(1)
    x = torch.where(inside.unsqueeze(1), xb, xa)
    return x, lam.view(-1, 1) * ta + (1.0 - lam.view(-1, 1)) * tb, lam


class FerKDParams:
    """FerKD's settings; ``registry.construct`` checks each value against its annotation."""

    def __init__(self, labels: Literal["teacher", "hard"] = "teacher", calibrate: bool = True,
                 tau_low: Probability = 0.2, bottom_frac: Probability = 0.25, epsilon: Probability = 0.1,
                 selfmix: Probability = 0.0, selfmix_alpha: Annotated[float, Gt(0)] = 1.0):
        self.labels, self.calibrate, self.tau_low, self.bottom_frac = labels, calibrate, tau_low, bottom_frac
        self.epsilon, self.selfmix, self.selfmix_alpha = epsilon, selfmix, selfmix_alpha


@METHODS.register("ferkd")
class FerKD(Distiller):
    bank_mode = "native"  # built by kd_engine.teacher_bank.bank_distiller; the teacher is never loaded
    wants_ids = True

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(student, None)
        if not cfg.use_teacher_bank:
            raise ConfigError("use_teacher_bank: method ferkd trains on the teacher bank; set use_teacher_bank: true")
        if cfg.distill.terms:
            raise ConfigError("distill.terms: method ferkd has its own loss (soft CE to the crop labels); "
                              "remove the terms")
        self.p = construct(FerKDParams, dict(cfg.distill.params), "distill.params")
        self.task_weight, self.seed, self.epoch = cfg.distill.task_weight, cfg.seed, 0
        self.weighting = build_weighting(cfg.weighting.strategy, cfg.weighting.params)
        self.bank = None

    def attach_bank(self, bank) -> None:
        self.bank = bank
        conf = bank.target_probs()
        self.register_buffer("view_conf", conf, persistent=False)
        mask = calibration_mask(conf, self.p.tau_low, self.p.bottom_frac)
        self.register_buffer("relabel", mask & self.p.calibrate & (self.p.labels == "teacher"), persistent=False)

    def begin_epoch(self, epoch: int, total_epochs: int) -> None:
        self.epoch = epoch

    def _targets(self, rows, views, logits, y):
        relabel = self.relabel[rows, views].to(y.device)
        classes = logits.shape[1]
        if self.p.labels == "hard":
            return F.one_hot(y, classes).float(), relabel
        teacher = logits.float().softmax(1)
        smooth = smoothed_onehot(y, classes, self.p.epsilon)
        return torch.where(relabel.view(-1, 1), smooth, teacher), relabel

    def forward(self, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor) -> StepOutput:
        if self.bank is None:
            raise RuntimeError("ferkd: no teacher bank attached (build it with kd_engine.teacher_bank)")
        rows = self.bank.rows(ids)
        mixing = self.p.selfmix > 0
        views = self.bank.draw(rows, self.seed, self.epoch, count=2 if mixing else 1)
        params, logits = self.bank.lookup(rows, views[:, 0])
        logits = logits.to(x.device)
        xa = apply_views(x, params)
        target, relabel = self._targets(rows, views[:, 0].cpu(), logits, y)
        lam = torch.ones(len(y), device=x.device)
        mix_view = torch.full((len(y),), -1.0, device=x.device)
        if mixing:
            params_b, logits_b = self.bank.lookup(rows, views[:, 1])
            target_b, _ = self._targets(rows, views[:, 1].cpu(), logits_b.to(x.device), y)
            height, width = x.shape[-2:]
            draw = torch.distributions.Beta(self.p.selfmix_alpha, self.p.selfmix_alpha).sample((len(y),))
            active = torch.rand(len(y)) < self.p.selfmix
            draw = torch.where(active, draw, torch.ones_like(draw))  # λ = 1: nothing pasted
            boxes = cutmix_boxes(draw, torch.rand(len(y)) * height, torch.rand(len(y)) * width, height, width)
            xa, target, lam = self_mix(xa, apply_views(x, params_b), target, target_b, boxes)
            mix_view = torch.where(lam < 1.0, views[:, 1].to(x.device).float(), mix_view)
        s_logits = self.student(xa)
        student_loss = F.cross_entropy(s_logits.float(), y, reduction="none")
        distill = soft_cross_entropy(s_logits, target, reduction="none")
        teacher_loss = F.cross_entropy(logits.float(), y, reduction="none")
        weights = self.weighting({"distill_loss": distill.detach(), "teacher_loss": teacher_loss,
                                  "teacher_logits": logits, "label": y, "student_loss": student_loss.detach()})
        weights = weights.detach()
        per_sample = {"student_loss": student_loss.detach(), "teacher_loss": teacher_loss,
                      "distill_loss": distill.detach(), "weight": weights,
                      "bank_view": views[:, 0].to(x.device).float(),
                      "bank_conf_y": self.view_conf[rows, views[:, 0].cpu()].to(x.device),
                      "calibrated": relabel.float(), "mix_lam": lam, "mix_view": mix_view}
        losses = {"task": self.task_weight * student_loss.mean(), "distill": (weights * distill).mean()}
        return StepOutput(s_logits, losses, per_sample, logits)
