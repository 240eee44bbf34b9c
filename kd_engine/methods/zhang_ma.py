"""Zhang & Ma (ICLR 2021) attention-guided and non-local distillation for detectors, with
per-(image, level) instance weights from the weighting strategy (AID, uniform, controls).

Per step (AID): the frozen teacher (eval mode) gives its own per-image/level/GT
detection losses *and* its FPN maps in one pass (``teacher_losses``); the student's train-mode
pass gives its task loss and FPN maps; the weighting strategy turns the teacher's losses into
w_{b,l}; then

  L = task_weight·L_det^S + (1/B) Σ_b Σ_l w_{b,l} (λ_AM L_AM + λ_AT (L_AT,ch + L_AT,sp) + λ_NL L_NL)

With ``granularity: per_gt`` the GT weights are painted into L_AM's spatial mask instead and
the global terms (AT, NL) take the image's w. All Zhang & Ma terms are feature imitation, so a
``decoupled`` AID uses its combined cls+box weight for them (cls/box weights are recorded).
The terms run in float32 even under bf16 autocast: softmax(G/τ) with τ = 0.1 is sensitive.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import torch
from annotated_types import Ge, Gt

from kd_engine.errors import ConfigError
from kd_engine.losses.detection_kd import TERMS, ZHANG_MA_DEFAULTS, FeatureDistillHead
from kd_engine.losses.detection_teacher import teacher_losses
from kd_engine.methods.detection_base import (DETECTION_METHODS, DetectionDistiller, DetectionOutput,
                                              gt_rows, level_rows, student_columns, student_pass,
                                              teacher_columns)
from kd_engine.methods.detection_cache import TeacherPassCache
from kd_engine.methods.registry import METHODS
from kd_engine.params import check_value, reject_unknown
from kd_engine.weighting import build_weighting
from kd_engine.weighting.aid_detection import fpn_strides, paint_per_gt_mask

# AID's base weights per detector kind; every arm of a comparison uses the same preset.
DEFAULT_PRESET = {"retinanet": "single_stage_baseline", "fcos": "single_stage_baseline",
                  "fasterrcnn": "two_stage_baseline"}
# each setting's kind and range (kd_engine.params); nl_pool / nl_inter_channels: one value or one per level
PARAMS = {"preset": str, "tau": Annotated[float, Gt(0)], "weights": dict[str, float] | None,
          "channel_mask": bool, "nonlocal": bool, "nl_pool": Any, "nl_inter_channels": Any,
          "levels": list[str] | None, "teacher_pass_cache": bool,
          "teacher_loss_source": Literal["teacher", "student_features"]}
TERM_WEIGHT = Annotated[float, Ge(0)]


def zhang_ma_settings(params: dict, kind: str, all_levels: list[str]) -> dict:
    """``distill.params`` -> tau, term weights and head switches (a preset, then overrides)."""
    reject_unknown(params, PARAMS, "distill.params", "method zhang_ma")
    params = {k: check_value(v, PARAMS[k], f"distill.params.{k}") for k, v in params.items()}
    preset = params.get("preset", DEFAULT_PRESET[kind])
    if preset not in ZHANG_MA_DEFAULTS:
        raise ConfigError(f"distill.params.preset: unknown preset {preset!r} "
                          f"(allowed: {', '.join(ZHANG_MA_DEFAULTS)})")
    row = dict(ZHANG_MA_DEFAULTS[preset])
    weights = params.get("weights") or {}
    if not isinstance(weights, dict) or set(weights) - set(TERMS):
        raise ConfigError(f"distill.params.weights: a mapping over {', '.join(TERMS)}, got {weights!r}")
    row.update({k: check_value(v, TERM_WEIGHT, f"distill.params.weights.{k}") for k, v in weights.items()})
    tau = float(params.get("tau", row.pop("tau")))
    use_nl = bool(params.get("nonlocal", row["nl"] > 0))
    if not use_nl:
        row["nl"] = 0.0
    levels = list(params.get("levels") or all_levels)
    unknown = [lv for lv in levels if lv not in all_levels]
    if unknown or not levels:
        raise ConfigError(f"distill.params.levels: {unknown or levels} not among this detector's "
                          f"levels ({', '.join(all_levels)})")
    if min(row.values()) < 0 or tau <= 0:
        raise ConfigError("distill.params: term weights must be >= 0 and tau > 0")
    source = params.get("teacher_loss_source", "teacher")
    cache = params.get("teacher_pass_cache", False)
    return {"preset": preset, "tau": tau, "weights": row, "nonlocal": use_nl, "levels": levels,
            "teacher_pass_cache": cache, "teacher_loss_source": source,
            "channel_mask": bool(params.get("channel_mask", True)),
            "nl_pool": params.get("nl_pool"), "nl_inter_channels": params.get("nl_inter_channels")}


@METHODS.register("zhang_ma")
@DETECTION_METHODS.register("zhang_ma")
class ZhangMa(DetectionDistiller):
    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(cfg, student, teacher, "zhang_ma")
        if student.kd_kind != teacher.kd_kind:
            raise ConfigError(f"teacher.name: Zhang & Ma pairs the FPN levels of one detector kind; "
                              f"the student is {student.kd_kind}, the teacher {teacher.kd_kind}")
        if cfg.distill.terms:
            raise ConfigError("distill.terms: zhang_ma sets its terms in distill.params "
                              "(preset, weights, tau, channel_mask, nonlocal)")
        self.settings = s = zhang_ma_settings(cfg.distill.params, student.kd_kind, student.kd_levels)
        self.task_weight = cfg.distill.task_weight
        self.term_weights = s["weights"]
        self.level_index = [student.kd_levels.index(lv) for lv in s["levels"]]
        self.strides = fpn_strides(student.kd_levels)
        try:
            self.head = FeatureDistillHead(
                s["levels"], student.backbone.out_channels, teacher.backbone.out_channels, s["tau"],
                use_channel_mask=s["channel_mask"], use_nonlocal=s["nonlocal"],
                nl_inter_channels=s["nl_inter_channels"], nl_pool=s["nl_pool"])
        except (TypeError, ValueError) as e:
            raise ConfigError(f"distill.params: {e}") from None
        self.weighting = build_weighting(cfg.weighting.strategy, cfg.weighting.params, task="detection")
        # Offline KD: the frozen teacher's pass is stored per image and replayed (no augmentation).
        self.teacher_cache = TeacherPassCache() if s["teacher_pass_cache"] else None
        self.loss_source = s["teacher_loss_source"]
        if self.loss_source == "student_features" and (
                student.backbone.out_channels != teacher.backbone.out_channels):
            raise ConfigError("distill.params.teacher_loss_source: student_features runs the "
                              "teacher's heads on the student's FPN maps, so both need the same "
                              f"fpn_channels (student {student.backbone.out_channels}, teacher "
                              f"{teacher.backbone.out_channels})")

    def teacher_pass(self, images, targets):
        """The teacher's FPN maps and own losses (no grad: a signal and a target), from the
        cache when ``distill.params.teacher_pass_cache`` is on."""
        live = lambda ims, tgs: teacher_losses(self.teacher, ims, tgs)  # noqa: E731
        return live(images, targets) if self.teacher_cache is None else self.teacher_cache(live, images, targets)

    def forward(self, images, targets) -> DetectionOutput:
        tl = self.teacher_pass(images, targets)
        sp = student_pass(self.student, images, targets)
        if self.loss_source == "student_features":  # the official code's form, as an ablation:
            # the teacher's heads grade the student's (detached) FPN maps
            scored = teacher_losses(self.teacher, images, targets,
                                    features={k: v.detach() for k, v in sp.features.items()})
        else:
            scored = tl
        used, raw = self.weighting.detection_weights(scored)
        B, L = tl.cls_level.shape
        idx = self.level_index
        w = used.as_image_level(B, L)[:, idx].float()
        levels = self.head.levels
        am_mask = None
        if used.per_gt is not None:
            shapes = {lv: tuple(tl.features[lv].shape[-2:]) for lv in levels}
            am_mask = paint_per_gt_mask(scored.per_gt, shapes, self.strides, used.feature,
                                        self.weighting.background, gt_weights=used.per_gt)
        device_type = next(iter(sp.features.values())).device.type
        with torch.autocast(device_type, enabled=False):
            terms = self.head({lv: sp.features[lv].float() for lv in levels},
                              {lv: tl.features[lv].float() for lv in levels}, am_mask)
        stacked = {t: torch.stack([terms[t][lv] for lv in levels], 1) for t in terms}  # (B, L')
        lam = self.term_weights
        raw_kd = sum(lam[t] * v for t, v in stacked.items())
        if am_mask is None:
            weighted = w * raw_kd
        else:  # the AM term carries its GT weights in the mask
            weighted = lam["am"] * stacked["am"] + w * (raw_kd - lam["am"] * stacked["am"])
        distill = weighted.sum(1).mean()
        losses = {"task": self.task_weight * sp.loss, "distill": distill}
        scalars = {"train/student_cls": sp.cls_batch, "train/student_box": sp.box_batch,
                   "train/teacher_loss": scored.total.mean().float(), "train/weight_mean": w.mean()}
        scalars.update({f"train/term/{t}": v.detach().sum(1).mean() for t, v in stacked.items()})

        def rows() -> dict:
            cols = {**teacher_columns(scored, idx), **student_columns(sp), "weight": w,
                    **{f"term_{t}": v for t, v in stacked.items()}, "distill_loss": raw_kd}
            if raw is not None:
                cols["aid_weight"] = raw.as_image_level(B, L)[:, idx]
            if used.decoupled:
                cols["weight_cls"] = used.as_image_level(B, L, "cls")[:, idx]
                cols["weight_box"] = used.as_image_level(B, L, "box")[:, idx]
            ids = torch.tensor([t["image_id"] for t in targets])
            out = level_rows(ids, idx, cols)
            if used.per_gt is None:
                return out
            extra = gt_rows(ids, scored, used.per_gt, raw.per_gt if raw is not None else None)
            return {k: _concat(out.get(k), extra.get(k), len(out["level"]), len(extra["level"]))
                    for k in {*out, *extra}}

        return DetectionOutput(losses, scalars, rows)


def _concat(a, b, na: int, nb: int):
    """Join image rows and GT rows; a column one side lacks is -1 (integer columns) or NaN."""
    def fill(n: int, like) -> np.ndarray:
        return np.full(n, -1 if like is not None and like.dtype.kind in "iu" else np.nan)

    a = fill(na, b) if a is None else a
    b = fill(nb, a) if b is None else b
    return np.concatenate([a, b])
