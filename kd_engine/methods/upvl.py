"""UP-VL (ICCV 2023): unsupervised 3-D perception with 2-D vision–language distillation.

A LiDAR-only student learns, without any 3-D label, to find objects and to name them by the
class embeddings of a 2-D vision–language teacher. Two things are taught (a reconstruction: the
paper publishes no code):

    L = L_obj + distill_weight · L_VL (+ class_weight · L_cls, the supervised upper bound only)
    L_obj = mean_p BCE(o(p), auto-label objectness(p))
    L_VL  = mean over visible p of [1 − cos(f_3D(p), sg(F_2D(u_p, v_p)))]     (kd_engine.losses.projected)
    L_cls = CE(cos(f_3D(p), t_c)/τ, true class) over points of the seen classes

The auto-labels (`kd_engine.parts.upvl_scenes`) come from motion (two-frame differencing +
DBSCAN), from the teacher's class-vs-background similarity (static objects), or from the truth
(upper bound). The teacher (`kd_engine.parts.vl_teacher`) is trained once on single-object
renders and cached with its scene feature maps. A point's class is argmax_c cos(f_3D(p), t_c)
over all classes, the held-out one included (zero-shot); an object's name is the argmax of its
points' mean cosine. Heads on the student's ``features`` layer: a linear map to the teacher's
D dimensions and a linear objectness logit. Recorded per scene: the auto-label counts
(``moving_labels``, ``static_labels``), the ``visible_fraction`` of its points, the loss terms;
per evaluated split: the zero-shot metrics, per-point classes and a per-object table (found,
named) through `point_predictions` / `point_artifacts`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Interval
from torch import nn

from kd_engine.data import build_data
from kd_engine.data.ground3d import PARAMS as GROUND3D_PARAMS
from kd_engine.data.scenes3d import GROUND
from kd_engine.errors import ConfigError
from kd_engine.losses.projected import projected_cosine_kd
from kd_engine.methods.base import Distiller, StepOutput
from kd_engine.methods.pointdc import POINT_METHODS
from kd_engine.methods.registry import METHODS
from kd_engine.models import feature_taps
from kd_engine.params import Param, read_params
from kd_engine.parts.upvl_eval import OBJECT_COLUMNS, evaluate_scenes
from kd_engine.parts.upvl_scenes import LABEL_SOURCES, label_scenes, object_renders, scene_tables
from kd_engine.parts.vl_teacher import cached_vl_teacher

CLASSES = GROUND  # object classes 0 .. GROUND-1; the ground is the class after them


@METHODS.register("upvl")
@POINT_METHODS.register("upvl")
class UPVL(Distiller):
    needs_teacher = False  # the 2-D teacher is built (and cached) here
    wants_ids = True
    defaults = {"labels": Param("motion_vl", kind=str), "distill_weight": Param(1.0, Ge(0)),
                "class_weight": Param(0.0, Ge(0)), "temperature": Param(0.1, Gt(0)),
                "held_out": Param(4, Interval(ge=0, le=CLASSES - 1)), "ground_height": Param(0.05, Ge(0)),
                "eps": Param(0.4, Gt(0)), "min_samples": Param(5, Ge(1)), "motion_threshold": Param(0.35, Gt(0)),
                "motion_fraction": Param(0.3, Interval(gt=0, le=1)), "vl_threshold": Param(0.0),
                "teacher_images": Param(400, Ge(10)), "teacher_epochs": Param(15, Ge(1)),
                "teacher_temperature": Param(0.2, Gt(0))}

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(student, None)
        p = self.p = read_params(cfg.distill.params, self.defaults, "distill.params", "method upvl")
        if p["labels"] not in LABEL_SOURCES:
            raise ConfigError(f"distill.params.labels: expected one of {', '.join(LABEL_SOURCES)}, got {p['labels']!r}")
        data = build_data(cfg.data, cfg.seed)
        if not hasattr(data.train, "previous"):
            raise ConfigError(f"data.name: method upvl needs two-frame scenes with a camera (ground3d), got {cfg.data.name!r}")
        self.layer = getattr(student, "embedding_layer", "features")
        size = data.train.images.shape[2]
        vl, path, self.teacher_losses = self.vl_teacher(p, size, cfg.cache_dir)
        self.register_buffer("embeddings", vl.class_embeddings.detach().clone())
        self.splits = {"train": data.train, "test": data.test}
        split_seed = cfg.data.split_seed if cfg.data.split_seed is not None else cfg.seed
        identity = {"data": cfg.data.model_dump(mode="json"), "split_seed": split_seed}
        for key, table in scene_tables(self.splits, vl, path, identity, cfg.cache_dir).items():
            self.register_buffer(key, table, persistent=False)  # maps, teacher_feats, teacher_valid, pixel
        self.labels = label_scenes(data.train, self.teacher_feats[data.train.ids], self.embeddings.numpy(),
                                   vl.background.detach().numpy(), p)
        rows = torch.zeros(len(self.maps), dtype=torch.long)
        rows[data.train.ids] = torch.arange(len(data.train))
        self.register_buffer("row", rows, persistent=False)
        for key in ("objectness", "target_class", "moving_labels", "static_labels"):
            self.register_buffer(key, torch.as_tensor(self.labels[key]), persistent=False)
        width = student.features.out_features
        self.project = nn.Linear(width, self.embeddings.shape[1])  # f_3D: into the teacher's space
        self.objectness_head = nn.Linear(width, 1)
        self.last: dict[str, tuple] = {}

    @staticmethod
    def vl_teacher(p: dict, size: int, cache_dir):
        """The cached 2-D teacher of these params (trained on single-object renders on first use)."""
        return cached_vl_teacher(lambda: object_renders(p["teacher_images"], size), CLASSES,
                                 {"renders": p["teacher_images"], "size": size}, cache_dir,
                                 epochs=p["teacher_epochs"], tau=p["teacher_temperature"])

    @classmethod
    def prepare_teacher(cls, cfg) -> str:
        """Train (or find) the cached teacher of ``cfg`` before runs start in parallel; its file."""
        p = read_params(cfg.distill.params, cls.defaults, "distill.params", "method upvl")
        size = read_params(cfg.data.params, GROUND3D_PARAMS, "data.params", "dataset ground3d")["image_size"]
        return cls.vl_teacher(p, size, cfg.cache_dir)[1]

    def heads(self, x, neighbours):
        with feature_taps(self.student, self.layer) as taps:
            logits = self.student(x, neighbours)
        h = taps[self.layer]
        return logits, self.project(h), self.objectness_head(h)[..., 0]

    def teacher_points(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.teacher_feats[ids], self.teacher_valid[ids]

    def forward(self, x, y, neighbours=None, ids=None) -> StepOutput:
        logits, f3d, obj = self.heads(x, neighbours)
        ids = ids.to(self.maps.device)
        rows = self.row[ids]
        obj_loss = F.binary_cross_entropy_with_logits(obj, self.objectness[rows], reduction="none").mean(1)
        visible = self.teacher_valid[ids]
        distill = projected_cosine_kd(f3d, self.maps[ids], self.pixel[ids], visible, reduction="none")
        target = self.target_class[rows]
        cos = F.normalize(f3d, dim=-1) @ F.normalize(self.embeddings, dim=-1).T
        ce = F.cross_entropy((cos / self.p["temperature"]).transpose(1, 2), target.clamp_min(0), reduction="none")
        known = (target >= 0).float()
        cls = (ce * known).sum(1) / known.sum(1).clamp_min(1.0)
        total = obj_loss + self.p["distill_weight"] * distill + self.p["class_weight"] * cls
        shown = {"student_loss": total.detach(), "objectness_loss": obj_loss.detach(), "distill_loss": distill.detach(),
                 "class_loss": cls.detach(), "moving_labels": self.moving_labels[rows].float(),
                 "static_labels": self.static_labels[rows].float(), "visible_fraction": visible.float().mean(1)}
        losses = {"objectness": obj_loss.mean(), "distill": self.p["distill_weight"] * distill.mean()}
        if self.p["class_weight"] > 0:
            losses["class"] = self.p["class_weight"] * cls.mean()
        return StepOutput(logits, losses, shown)

    @torch.no_grad()
    def evaluation_metrics(self, split: str, task) -> dict[str, float]:
        dataset = self.splits.get(split)
        if dataset is None or not len(dataset):
            return {}
        was = self.training
        self.eval()
        device = self.maps.device
        _, f3d, obj = self.heads(dataset.x.to(device), dataset.neighbours.to(device))
        self.train(was)
        metrics, columns, table, predicted = evaluate_scenes(
            dataset, torch.sigmoid(obj).cpu().numpy(), f3d.cpu().numpy(), self.embeddings.cpu().numpy(),
            held_out=self.p["held_out"], ground=GROUND, eps=self.p["eps"], min_samples=self.p["min_samples"])
        self.last[split] = (columns, table, predicted)
        shared = ("miou", "point_acc")  # the task scores the named points itself (mIoU, oAcc, IoU per class)
        return {f"{split}/student_{k}": v for k, v in metrics.items() if k not in shared and not k.startswith("iou_")}

    def point_predictions(self, split: str) -> np.ndarray | None:
        """(S, N) zero-shot class per point of the last evaluation of ``split`` (ground below objectness ½)."""
        return self.last[split][2] if split in self.last else None

    def point_artifacts(self, split: str) -> list[dict]:
        """Keyword arguments of the task's artifacts: the per-object table of the last evaluation
        and, once, the training scenes' auto-label clusters."""
        if split not in self.last:
            return []
        columns, table, _ = self.last[split]
        out = [dict(name=f"points/{split}/upvl_objects", array=table, kind="upvl_decisions", dtype="int32",
                    meta={"columns": list(OBJECT_COLUMNS), "held_out": self.p["held_out"], "split": split})]
        if split == "test":
            out.append(dict(name="points/train/upvl_autolabels", array=self.labels["cluster"], kind="upvl_decisions",
                            dtype="int16", meta={"instance_ids": self.splits["train"].ids.tolist(),
                                                 "what": f"auto-label cluster per point ({self.p['labels']}), -1 none"}))
        return out
