"""Feature imitation for detectors through a 1×1 adapter: the baseline UniKD is compared with.

At each chosen FPN level l the student's map passes a trainable 1×1 convolution A_l (student
channels → teacher channels) and is pulled to the frozen teacher's map of the same level:

    L = L_det + weight · (1/|levels|) Σ_l mean_{c,h,w} (A_l(F_S,l) − F_T,l)²

The maps must have the same size, so the levels are those both detectors have at the same
stride: p3–p5 between the single-stage detectors (P3–P7) and Faster R-CNN (P2–P5). Between
detectors of different kinds this is exactly what the semantic gap makes doubtful: the maps
are matched by position and stride only, whatever each detector's head expects from them.
The teacher's maps are computed once per training image (`TeacherRecords`). Recorded per
training image: ``mimic_mse`` (its mean squared difference over the levels).
"""
from __future__ import annotations

import numpy as np
import torch
from annotated_types import Ge
from torch import nn

from kd_engine.methods.detection_base import DETECTION_METHODS, DetectionDistiller, DetectionOutput, student_pass
from kd_engine.methods.registry import METHODS
from kd_engine.params import Param, check, read_params
from kd_engine.parts.knowledge_extractor import TeacherRecords

PARAMS = {"levels": Param(["p3", "p4", "p5"], kind=list[str]), "weight": Param(1.0, Ge(0))}


def detection_classes(model: nn.Module) -> int:
    """The number of classes of a torchvision detector, background included."""
    if model.kd_kind == "fasterrcnn":
        return int(model.roi_heads.box_predictor.cls_score.out_features)
    return int(model.head.classification_head.num_classes)


@METHODS.register("fpn_mimic")
@DETECTION_METHODS.register("fpn_mimic")
class FPNMimic(DetectionDistiller):
    name = "fpn_mimic"

    def __init__(self, cfg, student, teacher, input_shape, params: dict | None = None):
        super().__init__(cfg, student, teacher, self.name)
        self.p = p = params if params is not None else read_params(cfg.distill.params, PARAMS, "distill.params",
                                                                    "method fpn_mimic")
        shared = [lv for lv in student.kd_levels if lv in teacher.kd_levels]
        self.levels = list(p["levels"])
        check(bool(self.levels) and set(self.levels) <= set(shared), "distill.params.levels",
              f"a non-empty subset of the levels both detectors have ({', '.join(shared)}), got {self.levels!r}")
        c_s, c_t = student.backbone.out_channels, teacher.backbone.out_channels
        self.adapters = nn.ModuleDict({lv: nn.Conv2d(c_s, c_t, 1) for lv in self.levels})
        self.records = TeacherRecords(teacher, self.levels, top_k=0, min_score=1.0)

    def adapted(self, features) -> list[torch.Tensor]:
        return [self.adapters[lv](features[lv]) for lv in self.levels]

    def forward(self, images, targets) -> DetectionOutput:
        ids = [int(t["image_id"]) for t in targets]
        maps_t = self.records(images, ids)[0]
        sp = student_pass(self.student, images, targets)
        mse = torch.stack([(a.float() - t).pow(2).mean((1, 2, 3))
                           for a, t in zip(self.adapted(sp.features), maps_t)]).mean(0)
        losses = {"task": sp.loss, "mimic": self.p["weight"] * mse.mean()}
        scalars = {"train/student_cls": sp.cls_batch, "train/student_box": sp.box_batch}
        n = len(ids)
        rows = lambda: {"instance_id": np.asarray(ids), "level": np.full(n, -1), "label": np.full(n, -1),  # noqa: E731
                        "mimic_mse": mse.detach().cpu().numpy()}
        return DetectionOutput(losses, scalars, rows)


__all__ = ["FPNMimic", "PARAMS", "detection_classes"]
