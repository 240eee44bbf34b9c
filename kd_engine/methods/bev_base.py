"""Methods of BEV heatmap-detection runs (``BEV_METHODS``): ``scratch`` and ``bev_kd``, per scene.

A BEV detector (`kd_engine.models.bev`) returns per-class heatmap logits (B, K, h, w) and exposes
its regression map (B, 4, h, w) through the tap named in ``dense_outputs["regression"]``. The
detection loss of one scene is CenterNet's focal loss on the heatmaps plus the L1 error of the
offset and log-size at the true centre cells (averaged over them): one value per scene, so the
run store sees scenes as instances.

``bev_kd`` distils a student into a teacher on one feature map (``layer``, through a 1×1 conv
adapter to the teacher's width) and on the heatmap logits, with per-cell masks that sum to 1 per
scene (`kd_engine.losses.bev`): ``mask: full`` spreads the weight over every cell (full-map
mimicking), ``mask: foreground`` over the cells near a true object (where the true heatmap of
any class is ≥ 0.1). RDD (`kd_engine.methods.rdd`) builds on `BEVDistiller` with its own masks.
"""
from __future__ import annotations

from typing import Literal

import torch
from annotated_types import Ge, Gt
from torch import nn

from kd_engine.data.registry import DATASETS
from kd_engine.errors import ConfigError
from kd_engine.losses.bev import heatmap_focal, masked_binary_kl, masked_feature_mse
from kd_engine.methods.base import Distiller, StepOutput
from kd_engine.methods.registry import METHODS
from kd_engine.models import feature_taps
from kd_engine.models.taps import layer_shapes
from kd_engine.params import Param, read_params
from kd_engine.parts.bev_regions import disparity_map
from kd_engine.registry import Registry

BEV_METHODS: Registry = Registry("BEV method")
FOREGROUND_LEVEL = 0.1  # true-heatmap level above which a cell counts as near an object


def bev_forward(model: nn.Module, x: torch.Tensor, layers=()) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(heatmap logits, regression map, tapped features) of one forward pass."""
    reg_layer = getattr(model, "dense_outputs", {}).get("regression")
    if reg_layer is None:
        raise ConfigError(f"model: {type(model).__name__} has no regression map; BEV runs need a BEV detector "
                          "such as centerpoint_lite")
    with feature_taps(model, sorted(set(layers) | {reg_layer})) as feats:
        logits = model(x)
    return logits, feats[reg_layer], dict(feats)


def detection_loss(logits, regression, heatmap, reg, reg_mask) -> torch.Tensor:
    """Per-scene focal heatmap loss + mean L1 of (dx, dy, log l, log w) over the true centres."""
    count = reg_mask.flatten(1).sum(1).clamp(min=1)
    l1 = ((regression.float() - reg).abs().sum(1) * reg_mask).flatten(1).sum(1) / count
    return heatmap_focal(logits, heatmap, reduction="none") + l1


class TeacherMemo:
    """The frozen teacher's outputs per training scene, computed on the first epoch and reused:
    the teacher is in eval mode and the scenes are not augmented, so its heatmaps, regression
    and features of a scene never change, and a width-32 teacher's forward pass would otherwise
    cost more than the width-4 student's training step. Off (recompute every time) when the
    training split is augmented or the batch carries no instance ids."""

    def __init__(self):
        self.enabled = False
        self.outputs: dict[int, tuple[torch.Tensor, ...]] = {}

    def enable_for(self, data) -> None:
        self.enabled = getattr(data.train, "augment", None) is None

    @torch.no_grad()
    def __call__(self, teacher: nn.Module, x: torch.Tensor, ids: torch.Tensor | None, layers=()):
        """(heatmap logits, regression, {layer: features}) of the teacher on the batch."""
        keys = None if ids is None or not self.enabled else [int(i) for i in ids.tolist()]
        if keys is not None and all(k in self.outputs for k in keys):
            logits, regression, *feats = (torch.stack(parts) for parts in zip(*(self.outputs[k] for k in keys)))
            return logits, regression, dict(zip(layers, feats))
        logits, regression, feats = bev_forward(teacher, x, layers)
        if keys is not None:
            for row, key in enumerate(keys):
                self.outputs[key] = (logits[row], regression[row], *(feats[n][row] for n in layers))
        return logits, regression, {n: feats[n] for n in layers}


def check_bev_data(cfg, method: str) -> None:
    if getattr(DATASETS.get(cfg.data.name, field="data.name"), "task", "classification") != "bev":
        raise ConfigError(f"data.name: method {method} trains BEV detectors; use a BEV dataset such as "
                          f"bev_scenes, got {cfg.data.name!r}")


@BEV_METHODS.register("scratch")
class BEVScratch(Distiller):
    """The student alone on its heatmaps and boxes; a teacher, if given, is only observed."""

    needs_teacher = False
    wants_ids = True  # for the teacher memo

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(student, teacher)
        check_bev_data(cfg, cfg.method)
        self.memo = TeacherMemo()

    def check_data(self, data) -> None:
        self.memo.enable_for(data)

    def forward(self, x, heatmap, reg, reg_mask, ids=None) -> StepOutput:
        logits, regression, _ = bev_forward(self.student, x)
        loss = detection_loss(logits, regression, heatmap, reg, reg_mask)
        per_sample, t_logits = {"student_loss": loss.detach()}, None
        if self.teacher is not None:
            t_logits, t_reg, _ = self.memo(self.teacher, x, ids)
            per_sample["teacher_loss"] = detection_loss(t_logits, t_reg, heatmap, reg, reg_mask)
        return StepOutput(logits, {"task": loss.mean()}, per_sample, t_logits)


class BEVDistiller(Distiller):
    """Student and teacher passes, the detection loss and the weighted distillation terms; a
    subclass gives the per-cell masks (`masks`) and may add terms (`extra_terms`)."""

    defaults = {"layer": "neck", "feature_weight": Param(1.0, Ge(0)), "logit_weight": Param(1.0, Ge(0)),
                "temperature": Param(1.0, Gt(0))}
    wants_ids = True  # for the teacher memo

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(student, teacher)
        check_bev_data(cfg, cfg.method)
        self.p = read_params(cfg.distill.params, self.defaults, "distill.params", f"method {cfg.method}")
        self.layer = self.p["layer"]
        s_shape = layer_shapes(student, input_shape, [self.layer], field="distill.params.layer")[self.layer]
        t_shape = layer_shapes(teacher, input_shape, [self.layer], field="distill.params.layer")[self.layer]
        if len(s_shape) != 3 or s_shape[1:] != t_shape[1:]:
            raise ConfigError(f"distill.params.layer: {self.layer} gives student {s_shape} and teacher {t_shape}; "
                              "BEV distillation needs (C, H, W) maps of the same H, W")
        self.adapter = self.build_adapter(s_shape[0], t_shape[0])
        self.memo = TeacherMemo()

    def check_data(self, data) -> None:
        self.memo.enable_for(data)

    def build_adapter(self, s_channels: int, t_channels: int) -> nn.Module:
        return nn.Conv2d(s_channels, t_channels, 1, bias=False)

    def adapt(self, feature: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """(the student's map at the teacher's width, extra adapter outputs)."""
        return self.adapter(feature), {}

    def masks(self, s_logits, t_logits, adapter_out, t_feat, heatmap, reg_mask) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(feature mask, logit mask, per-scene decisions) of a batch; masks are (B, h, w)."""
        raise NotImplementedError

    def selection(self, t_logits, adapter_out, t_feat, reg_mask) -> dict[str, torch.Tensor] | None:
        """The regions the method chose in a batch (``index``, ``valid``, ``foreground``,
        ``disparity``, each (B, R)), or None for a method that chooses none."""
        return None

    @torch.no_grad()
    def region_view(self, x, reg_mask) -> dict[str, torch.Tensor]:
        """What the dashboard shows of the method on scenes ``x`` (evaluation mode): the
        window disparity map (B, h, w) between the adapted student and the teacher and, for a
        method that selects regions, its selection."""
        t_logits, _, t_feats = bev_forward(self.teacher, x, [self.layer])
        _, _, s_feats = bev_forward(self.student, x, [self.layer])
        adapted, adapter_out = self.adapt(s_feats[self.layer])
        out = {"disparity_map": disparity_map(adapter_out.get("mu", adapted), t_feats[self.layer])}
        chosen = self.selection(t_logits, {"mu": adapted, **adapter_out}, t_feats[self.layer], reg_mask)
        return {**out, **(chosen or {})}

    def extra_terms(self, adapter_out: dict) -> dict[str, torch.Tensor]:
        return {}

    def forward(self, x, heatmap, reg, reg_mask, ids=None) -> StepOutput:
        t_logits, t_reg, t_feats = self.memo(self.teacher, x, ids, [self.layer])
        s_logits, s_reg, s_feats = bev_forward(self.student, x, [self.layer])
        adapted, adapter_out = self.adapt(s_feats[self.layer])
        t_feat = t_feats[self.layer]
        f_mask, l_mask, decisions = self.masks(s_logits, t_logits, {"mu": adapted, **adapter_out}, t_feat, heatmap,
                                               reg_mask)
        terms = {"feature": self.p["feature_weight"] * masked_feature_mse(adapted, t_feat, f_mask, reduction="none"),
                 "logit": self.p["logit_weight"] * masked_binary_kl(s_logits, t_logits, l_mask, self.p["temperature"],
                                                                    reduction="none"),
                 **self.extra_terms(adapter_out)}
        student = detection_loss(s_logits, s_reg, heatmap, reg, reg_mask)
        distill = sum(terms.values())
        per_sample = {"student_loss": student.detach(), "distill_loss": distill.detach(),
                      "teacher_loss": detection_loss(t_logits, t_reg, heatmap, reg, reg_mask),
                      **{f"term_{k}": v.detach() for k, v in terms.items()}, **decisions}
        return StepOutput(s_logits, {"task": student.mean(), "distill": distill.mean()}, per_sample, t_logits)

    def feature_pairs(self) -> list[tuple[str, str]]:
        return [(self.layer, self.layer)]


def uniform(cells: torch.Tensor) -> torch.Tensor:
    """(B, h, w) weights 1/|cells| on the True cells of each scene (0 for a scene with none)."""
    cells = cells.float()
    return cells / cells.flatten(1).sum(1).clamp(min=1)[:, None, None]


@METHODS.register("bev_kd")
@BEV_METHODS.register("bev_kd")
class BEVFeatureKD(BEVDistiller):
    defaults = {**BEVDistiller.defaults, "mask": Param("full", kind=Literal["full", "foreground"])}

    def masks(self, s_logits, t_logits, adapter_out, t_feat, heatmap, reg_mask):
        if self.p["mask"] == "full":
            mask = uniform(torch.ones_like(reg_mask, dtype=torch.bool))
        else:
            mask = uniform(heatmap.amax(1) >= FOREGROUND_LEVEL)
        return mask, mask, {"masked_cells": (mask > 0).flatten(1).sum(1).float()}


__all__ = ["BEV_METHODS", "BEVDistiller", "BEVFeatureKD", "BEVScratch", "bev_forward", "detection_loss"]
