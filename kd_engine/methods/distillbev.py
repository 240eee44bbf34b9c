"""DistillBEV (ICCV 2023): a camera BEV detector imitates a LiDAR detector's BEV features, with the
imitation balanced by region, object scale and the teacher's attention.

The student's map F_S on ``layer`` goes through a 1×1 adapter to the teacher's width (F̂_S); the
teacher's map F_T is used as is (no adapter on the teacher side). With ``imitation: weighted``:

    L_fg = fg_weight · Σ M_fg·S·A_s·A_c·(F̂_S − F_T)²      L_bg = bg_weight · (same with M_bg)
    L_ch = channel_weight · Σ_c |mean_hw F_T − mean_hw F̂_S|
    L_sp = spatial_weight · Σ_hw |mean_c F_T − conv3×3(mean_c F̂_S)|

per scene (`kd_engine.losses.bev_distill`), where M_fg/M_bg are the cells inside/outside the true
box footprints, S the scale mask (√(cell area/(l·w)) on an object's cells, 1/N_bg on the
background; `kd_engine.parts.bev_masks`) and A_s, A_c the teacher's detached spatial and channel
attention at temperature ``tau``. ``scale: false`` spreads the same total foreground weight
evenly over the foreground cells (an ablation that moves weight between small and large objects
only; reconstruction). ``false_positives: true`` adds L_fp = fg_weight · Σ W_fp·A_s·A_c·(F̂_S − F_T)²
over cells with no object (true heatmap < ``fp_gt_below``) where the teacher or the student fires
(> ``fp_score_above``), each connected component weighted 1/|component| (how the paper combines
them with the other terms is not known: reconstruction). ``imitation: uniform`` is the plain
control, ``feature_weight`` · mean over cells and channels of (F̂_S − F_T)². The detection loss
is the task's. Recorded per scene: foreground, background and false-positive cell counts, the
number of false-positive components, the share of the spatial attention on the foreground, and
each term.
"""
from __future__ import annotations

from typing import Literal

import torch
from annotated_types import Ge, Gt, Interval
from torch import nn

from kd_engine.losses.bev import masked_feature_mse
from kd_engine.losses.bev_distill import global_channel, global_spatial, region_imitation, teacher_attention
from kd_engine.methods.base import StepOutput
from kd_engine.methods.bev_base import BEV_METHODS, BEVDistiller, bev_forward, detection_loss, uniform
from kd_engine.methods.registry import METHODS
from kd_engine.params import Param
from kd_engine.parts.bev_masks import false_positive_regions, scene_masks

Fraction = Interval(ge=0, le=1)


@METHODS.register("distillbev")
@BEV_METHODS.register("distillbev")
class DistillBEV(BEVDistiller):
    wants_boxes = True  # the task passes each scene's boxes in map cells: footprints need the yaw
    defaults = {**BEVDistiller.defaults, "logit_weight": Param(0.0, Ge(0)),
                "imitation": Param("weighted", kind=Literal["weighted", "uniform"]),
                "fg_weight": Param(1.5e-3, Ge(0)), "bg_weight": Param(4e-2, Ge(0)),
                "channel_weight": Param(0.25, Ge(0)), "spatial_weight": Param(2.5e-3, Ge(0)),
                "tau": Param(0.5, Gt(0)), "scale": True, "attention": True, "false_positives": False,
                "fp_gt_below": Param(0.1, Fraction), "fp_score_above": Param(0.3, Fraction)}

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(cfg, student, teacher, input_shape)
        self.spatial_conv = nn.Conv2d(1, 1, 3, padding=1)  # g of the spatial global term

    def _masks(self, boxes, t_feat, heatmap, s_logits, t_logits) -> dict[str, torch.Tensor]:
        """Per-cell decisions of a batch, each (B, h, w): foreground, scale, attention, false positives."""
        fg, scale = scene_masks(boxes, *t_feat.shape[-2:])
        fg, scale = fg.to(t_feat.device), scale.to(t_feat.device)
        if not self.p["scale"]:  # the same foreground total, spread evenly over the foreground cells
            total = (scale * fg).flatten(1).sum(1)
            scale = torch.where(fg, (total / fg.flatten(1).sum(1).clamp(min=1))[:, None, None], scale)
        if self.p["attention"]:
            a_s, a_c = teacher_attention(t_feat, self.p["tau"])
        else:
            a_s, a_c = torch.ones_like(scale), torch.ones(t_feat.shape[:2], device=t_feat.device)
        out = {"foreground": fg, "scale": scale, "attention": a_s, "channel_attention": a_c}
        if self.p["false_positives"]:
            out["false_positive"] = false_positive_regions(
                heatmap, [torch.sigmoid(t_logits.float()), torch.sigmoid(s_logits.float())], fg,
                self.p["fp_gt_below"], self.p["fp_score_above"])
        return out

    def imitation(self, adapted, t_feat, m) -> dict[str, torch.Tensor]:
        """The per-scene imitation terms (weights applied)."""
        p = self.p
        if p["imitation"] == "uniform":
            full = uniform(torch.ones_like(t_feat[:, 0], dtype=torch.bool))
            return {"uniform": p["feature_weight"] * masked_feature_mse(adapted, t_feat, full, reduction="none")}
        fg = m["foreground"].float()
        region = lambda mask: region_imitation(adapted, t_feat, mask, m["attention"], m["channel_attention"],  # noqa: E731
                                               reduction="none")
        terms = {"fg": p["fg_weight"] * region(fg * m["scale"]), "bg": p["bg_weight"] * region((1 - fg) * m["scale"]),
                 "channel": p["channel_weight"] * global_channel(adapted, t_feat, reduction="none"),
                 "spatial": p["spatial_weight"] * global_spatial(self.spatial_conv(adapted.mean(1, keepdim=True)),
                                                                 t_feat, reduction="none")}
        if "false_positive" in m:
            terms["fp"] = p["fg_weight"] * region(m["false_positive"])
        return terms

    def forward(self, x, heatmap, reg, reg_mask, boxes, ids=None) -> StepOutput:
        t_logits, t_reg, t_feats = self.memo(self.teacher, x, ids, [self.layer])  # frozen: memoised per scene
        s_logits, s_reg, s_feats = bev_forward(self.student, x, [self.layer])
        adapted, t_feat = self.adapter(s_feats[self.layer]), t_feats[self.layer]
        m = self._masks(boxes, t_feat, heatmap, s_logits, t_logits)
        terms = self.imitation(adapted, t_feat, m)
        student = detection_loss(s_logits, s_reg, heatmap, reg, reg_mask)
        distill = sum(terms.values())
        per_sample = {"student_loss": student.detach(), "distill_loss": distill.detach(),
                      "teacher_loss": detection_loss(t_logits, t_reg, heatmap, reg, reg_mask),
                      **{f"term_{k}": v.detach() for k, v in terms.items()}, **decisions(m)}
        return StepOutput(s_logits, {"task": student.mean(), "distill": distill.mean()}, per_sample, t_logits)

    @torch.no_grad()
    def region_view(self, x, reg_mask, boxes=None) -> dict[str, torch.Tensor]:
        """The feature disparity map and, given the scenes' boxes, the masks and attention the
        method weighs each cell by (``*_map``, each (B, h, w))."""
        out = super().region_view(x, reg_mask)
        if boxes is None:
            return out
        t_logits, _, t_feats = bev_forward(self.teacher, x, [self.layer])
        s_logits, _, _ = bev_forward(self.student, x, [self.layer])
        heat = torch.zeros_like(t_logits)  # no true heatmap here: any firing counts as unexplained
        m = self._masks(boxes, t_feats[self.layer], heat, s_logits, t_logits)
        maps = {"scale_map": m["scale"], "foreground_map": m["foreground"].float(), "attention_map": m["attention"]}
        if "false_positive" in m:
            maps["false_positive_map"] = m["false_positive"]
        return {**out, **maps}


def decisions(m: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the method decided per scene, as recorded in the run store."""
    fg = m["foreground"].float()
    out = {"fg_cells": fg.flatten(1).sum(1), "bg_cells": (1 - fg).flatten(1).sum(1),
           "attention_fg_share": (m["attention"] * fg).flatten(1).sum(1) / fg[0].numel()}
    if "false_positive" in m:
        out["fp_cells"] = (m["false_positive"] > 0).float().flatten(1).sum(1)
        out["fp_components"] = m["false_positive"].flatten(1).sum(1)  # each component sums to 1
    return out
