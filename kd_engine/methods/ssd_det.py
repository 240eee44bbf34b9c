"""SSD-Det (ICCV 2023, "Spatial Self-Distillation for Object Detection with Inaccurate Bounding
Boxes"): refine noisy training boxes with multiple-instance learning over proposal bags, spatial
self-distillation (SPSD) and an IoU confidence (SISD).

For each object with noisy box b̃ and class y, a bag of P proposals is drawn around b̃
(`kd_engine.parts.box_bags.proposal_bag`). MIL scores each proposal: class probabilities c_p
(softmax over K classes + background) and an instance score s_p (softmax over the bag); the
weight w_p = c_p[y]·s_p, the bag loss is the BCE of Σ_p c_p s_p against y
(`kd_engine.losses.box_refine.mil_bag_loss`, weight 0.25) and random background RoIs are pushed
to the background class (weight 0.75). The pseudo box is the top-k weighted merge (k = 7).

* ``spsd``: a regressor predicts deltas Δ(p) from every proposal to the *noisy* box,
  L = 0.25·mean_p |Δ(p) − enc(p, b̃)|₁. The noise is drawn independently per object with mean
  zero, so the regressor learns roughly E[b̃ | image] (nearer the true box than b̃). The decoded,
  detached boxes dec(p, Δ(p)) become the bag that MIL scores and merges.
* ``sisd``: an IoU head reads [f_p, mean_bag f] and regresses (IoU(p, b*_MIL) − 0.5)/0.5, where
  b*_MIL is the MIL merge (SmoothL1, weight 5); its output, min–max normalised within the bag,
  multiplies the weights before the final merge.

Reconstruction (the paper's mapping of its code branches to SPSD and SISD is inferred): one MIL
stage (the paper has two, softmax/BCE then sigmoid/focal, with a stage-0 regressor between them);
the confidence re-weights only the merge, not the MIL loss; no final detector is trained on b*.
Recorded per object: the pseudo box, the bag's largest normalised weight, the top-k weight mass,
the mean confidence of the merged proposals (SISD) and each loss.
"""
from __future__ import annotations

from annotated_types import Ge, Gt, Interval
import torch
import torch.nn.functional as F

from kd_engine.errors import ConfigError
from kd_engine.losses.box_refine import delta_l1, iou_confidence_loss, mil_bag_loss, mil_scores
from kd_engine.methods.base import Distiller, StepOutput
from kd_engine.methods.box_refine_base import BOX_REFINE_METHODS, Decisions
from kd_engine.methods.registry import METHODS
from kd_engine.params import Param, check, read_params
from kd_engine.parts.box_bags import (decode, encode, minmax_per_bag, negative_boxes, paired_iou, proposal_bag,
                                      topk_weighted_merge)

DEFAULTS = {"spsd": True, "sisd": True, "bag_size": Param(10, Ge(2)), "topk": Param(7, Ge(1)),
            "scale_min": Param(0.7, Gt(0)), "scale_max": Param(1.3, Gt(0)), "jitter": Param(0.2, Ge(0)),
            "min_iou": Param(0.3, Interval(ge=0, le=1)), "negatives": Param(16, Ge(0)),
            "mil_weight": Param(0.25, Ge(0)), "negative_weight": Param(0.75, Ge(0)),
            "spsd_weight": Param(0.25, Ge(0)), "sisd_weight": Param(5.0, Ge(0))}


@BOX_REFINE_METHODS.register("ssd_det")
@METHODS.register("ssd_det")
class SSDDet(Distiller):
    needs_teacher = False  # self-distillation: the network teaches its own next bag
    single_process = True  # objects are not sharded across processes

    def __init__(self, cfg, student, teacher, input_shape):
        if teacher is not None:
            raise ConfigError("teacher: method 'ssd_det' distils from itself; remove the teacher section")
        super().__init__(student, None)
        p = self.p = read_params(cfg.distill.params, DEFAULTS, "distill.params", "method ssd_det")
        check(hasattr(student, "bag_features"), "student.name",
              f"method ssd_det crops RoIs from its network; use model roi_net, got {cfg.student.name!r}")
        check(p["topk"] <= p["bag_size"], "distill.params.topk", f"at most bag_size ({p['bag_size']}), got {p['topk']}")
        check(p["scale_min"] <= p["scale_max"], "distill.params.scale_min",
              f"at most scale_max ({p['scale_max']}), got {p['scale_min']}")
        self.size = int(input_shape[-1])

    def decide(self, feats, noisy, labels, owner, generator=None) -> tuple[Decisions, dict[str, torch.Tensor]]:
        """The bag, weights and pseudo box of every object, and the per-object losses."""
        p, net = self.p, self.student
        proposals = proposal_bag(noisy, p["bag_size"], (p["scale_min"], p["scale_max"]), p["jitter"],
                                 p["min_iou"], generator)
        losses: dict[str, torch.Tensor] = {}
        bag = proposals
        if p["spsd"]:
            deltas = net.reg_head(net.bag_features(feats, proposals, owner))
            losses["spsd"] = p["spsd_weight"] * delta_l1(deltas, encode(proposals, noisy[:, None].expand_as(proposals)),
                                                         "none")
            bag = decode(proposals, deltas.detach(), self.size)
            bag = torch.cat([bag[..., :2], torch.maximum(bag[..., 2:], bag[..., :2] + 1.0)], -1)
        f = net.bag_features(feats, bag, owner)
        cls, ins = net.cls_head(f), net.ins_head(f)[..., 0]
        losses["mil"] = p["mil_weight"] * mil_bag_loss(cls, ins, labels, "none")
        c, s = mil_scores(cls, ins)
        weights = (c.gather(-1, labels[:, None, None].expand(-1, bag.shape[1], 1))[..., 0] * s).detach()
        pseudo, chosen = topk_weighted_merge(bag, weights, p["topk"])
        confidence = None
        if p["sisd"]:
            raw = net.iou_confidence(f)
            losses["sisd"] = p["sisd_weight"] * iou_confidence_loss(raw, paired_iou(bag, pseudo[:, None]), "none")
            confidence = minmax_per_bag(raw.detach())
            weights = weights * confidence
            pseudo, chosen = topk_weighted_merge(bag, weights, p["topk"])
        return Decisions(proposals, bag, weights, confidence, pseudo.detach(), chosen), losses

    def forward(self, x, noisy, labels, owner) -> StepOutput:
        feats = self.student(x)
        decisions, per_object = self.decide(feats, noisy, labels, owner)
        losses = {k: v.mean() for k, v in per_object.items()}
        if self.p["negatives"]:
            rois = negative_boxes(noisy.detach().cpu(), owner.cpu(), len(x), self.p["negatives"], self.size,
                                  (4.0, self.size / 2)).to(x.device)
            if len(rois):
                background = torch.full((len(rois),), self.student.cls_head.out_features - 1, device=x.device)
                logits = self.student.cls_head(self.student.roi_features(feats, rois))
                losses["negative"] = self.p["negative_weight"] * F.cross_entropy(logits, background)
        per_sample = {**decisions.columns(), **{f"{k}_loss": v.detach() for k, v in per_object.items()}}
        return StepOutput(decisions.pseudo, losses, per_sample)

    @torch.no_grad()
    def refine(self, x, noisy, labels, owner, generator=None) -> Decisions:
        return self.decide(self.student(x), noisy, labels, owner, generator)[0]

    def describe(self) -> dict:
        return {"spsd": self.p["spsd"], "sisd": self.p["sisd"], "topk": self.p["topk"], "bag_size": self.p["bag_size"]}
