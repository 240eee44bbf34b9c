"""PointDC (ICCV 2023): unsupervised point-cloud segmentation by cross-modal distillation (CMD)
and super-voxel clustering (SVC).

CMD (epochs [0, cmd_epochs)): a frozen 2-D network's features of rendered views, back-projected
to the points and averaged per super-voxel (`kd_engine.parts.point_teacher`, cached), are the
targets of the student's per-point features through a linear alignment layer A:

    L_CMD = mean over points p with a 2-D feature of ‖n(A(s_p)) − n(t_p)‖²   (n: L2 normalisation)

SVC (the next svc_warmup + svc_epochs epochs): every ``recluster_every`` epochs the student's
L2-normalised point features are averaged per super-voxel, cosine k-means gives ``primitives``
normalised centroids, and each super-voxel's nearest centroid becomes the pseudo-label of its
points; the student learns them by cross-entropy on cos(n(s_p), c_k)/temperature, through a
learnable linear head (initialised at the centroids) in the warm-up epochs, then through a fixed
bias-free classifier equal to the centroids (reset at each re-clustering; a learnable one drifts).
Evaluation (`kd_engine.tasks.points`) assigns points to their nearest centroid and merges the
centroids into the classes by k-means. Epochs past the stages continue the last one.
Reconstruction: one optimizer (the run's) serves both stages, and the temperature is ours.
Recorded per scene: the CMD loss, the share of points with a 2-D feature (``weight``), the SVC
loss and the purity of the scene's pseudo-labels; per re-clustering, every super-voxel's
pseudo-label (artifact ``points/pseudo_labels``) and the pseudo-labels' matched mIoU on the
training scenes (``svc/pseudo_mIoU``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kd_engine.cluster_metrics import contingency, match_clusters, merge_primitives
from kd_engine.data import build_data
from kd_engine.data.registry import DATASETS
from kd_engine.errors import ConfigError
from kd_engine.losses.points import masked_normalised_mse
from kd_engine.methods.base import Distiller, StepOutput
from kd_engine.methods.registry import METHODS
from kd_engine.models import feature_taps
from kd_engine.params import Param, read_params
from kd_engine.parts.point_teacher import GaborTeacher, cached_point_features, log_standardise, point_teacher_features, whiten
from kd_engine.parts.supervoxel import cosine_kmeans, scatter_mean
from kd_engine.registry import Registry
from annotated_types import Ge, Gt

POINT_METHODS: Registry = Registry("point-cloud method")


@METHODS.register("pointdc")
@POINT_METHODS.register("pointdc")
class PointDC(Distiller):
    needs_teacher = False  # the teacher is a frozen 2-D network over the renders, built here
    wants_ids = True
    defaults = {"cmd_epochs": Param(40, Ge(0)), "svc_warmup": Param(10, Ge(0)), "svc_epochs": Param(20, Ge(0)),
                "recluster_every": Param(5, Ge(1)), "primitives": Param(20, Ge(2)), "kmeans_iterations": Param(80, Ge(1)),
                "temperature": Param(0.1, Gt(0)), "teacher_min_period": Param(2.5, Ge(2)),
                "teacher_scales": Param(3, Ge(1)), "teacher_step": Param(1.3, Gt(1)), "teacher_orientations": Param(4, Ge(1)),
                "teacher_pool": Param(2.0, Gt(0)),
                "teacher_components": Param(4, Ge(1))}

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(student, None)
        if getattr(DATASETS.get(cfg.data.name, field="data.name"), "task", "classification") != "points":
            raise ConfigError(f"data.name: method pointdc segments point clouds; use a point-cloud dataset such as "
                              f"rooms3d, got {cfg.data.name!r}")
        p = self.p = read_params(cfg.distill.params, self.defaults, "distill.params", "method pointdc")
        self.seed, self.layer = int(cfg.seed), getattr(student, "embedding_layer", "features")
        data = build_data(cfg.data, cfg.seed)
        self.train_data, self.num_classes = data.train, data.num_classes
        identity = {"data": cfg.data, "seed": cfg.seed, **{k: p[k] for k in p if k.startswith("teacher_")}}
        net = GaborTeacher(p["teacher_min_period"], p["teacher_scales"], p["teacher_step"], p["teacher_orientations"],
                           p["teacher_pool"])
        splits = (data.train, data.test)

        def compute():  # log-standardised and whitened with the training scenes' statistics (no labels)
            parts = [point_teacher_features(net, s.images, s.pixel, s.visible, s.supervoxel) for s in splits]
            parts = [(log_standardise(f, v, *parts[0]), v) for f, v in parts]
            k = min(p["teacher_components"], parts[0][0].shape[-1])
            feats = [whiten(f, v, *parts[0], k) for f, v in parts]
            return np.concatenate(feats), np.concatenate([v for _, v in parts])
        feats, valid = cached_point_features(cfg.cache_dir, identity, compute)
        ids = np.concatenate([s.ids.numpy() for s in splits])  # rows of the tables below are scene ids
        table, known = np.zeros((ids.max() + 1, *feats.shape[1:]), np.float32), np.zeros((ids.max() + 1, feats.shape[1]), bool)
        table[ids], known[ids] = feats, valid
        self.register_buffer("teacher_feats", torch.as_tensor(table), persistent=False)
        self.register_buffer("teacher_valid", torch.as_tensor(known), persistent=False)
        width = student.features.out_features if hasattr(student, "features") else feats.shape[-1]
        self.align = nn.Linear(width, feats.shape[-1])
        self.head = nn.Linear(width, p["primitives"], bias=False)  # the warm-up's learnable classifier
        self.register_buffer("centroids", torch.zeros(0, width))
        self.register_buffer("pseudo", torch.zeros(len(table), input_shape[0], dtype=torch.long))
        self.register_buffer("purity", torch.zeros(len(table)))
        self.stage, self.round_metrics, self.decisions = "cmd", {}, None

    def stage_of(self, epoch: int) -> str:
        p = self.p
        if epoch < p["cmd_epochs"] or p["svc_warmup"] + p["svc_epochs"] == 0:
            return "cmd"
        return "warmup" if epoch < p["cmd_epochs"] + p["svc_warmup"] else "fixed"

    def begin_epoch(self, epoch: int, total_epochs: int) -> None:
        self.stage, self.round_metrics = self.stage_of(epoch), {}
        start = self.p["cmd_epochs"] if self.p["cmd_epochs"] > 0 else 0
        if self.stage != "cmd" and (epoch - start) % self.p["recluster_every"] == 0:
            self.recluster(epoch)

    @torch.no_grad()
    def point_features(self, x, neighbours) -> torch.Tensor:
        was = self.student.training
        self.student.eval()
        with feature_taps(self.student, self.layer) as taps:
            self.student(x, neighbours)
        self.student.train(was)
        return F.normalize(taps[self.layer].float(), dim=-1)

    @torch.no_grad()
    def recluster(self, epoch: int) -> None:
        """New centroids and pseudo-labels from the training scenes' super-voxel features."""
        device = self.pseudo.device
        ds = self.train_data
        feats = self.point_features(ds.x.to(device), ds.neighbours.to(device))
        sv = torch.as_tensor(ds.supervoxel, device=device)
        offset = (sv.amax(1, keepdim=True) + 1).cumsum(0) - (sv.amax(1, keepdim=True) + 1)
        flat = (sv + offset).reshape(-1)
        pooled = scatter_mean(feats.reshape(-1, feats.shape[-1]), flat, int(flat.max()) + 1)
        self.centroids, assign = cosine_kmeans(pooled, self.p["primitives"], self.p["kmeans_iterations"],
                                               self.seed + epoch)
        self.head.weight.data[: len(self.centroids)] = self.centroids
        labels = assign[flat].reshape(sv.shape)
        self.pseudo[ds.ids.to(device)] = labels
        y, k, c = ds.y.numpy(), len(self.centroids), self.num_classes
        labels_np = labels.cpu().numpy()
        for row, i in enumerate(ds.ids.tolist()):  # share of points whose primitive's majority class is theirs
            self.purity[i] = float(contingency(y[row], labels_np[row], c, k).max(0).sum()) / y.shape[1]
        merged = merge_primitives(self.centroids.cpu().numpy(), c, self.seed)
        self.round_metrics = {"svc/pseudo_mIoU": match_clusters(y, merged[labels_np], c).miou}
        per_sv = np.full((len(sv), int(sv.amax()) + 1), -1, dtype=np.int64)  # pseudo-label per super-voxel
        rows = np.repeat(np.arange(len(sv)), sv.shape[1])
        per_sv[rows, ds.supervoxel.reshape(-1)] = labels_np.reshape(-1)
        self.decisions = {"epoch": epoch, "scene_ids": ds.ids.tolist(), "pseudo_labels": per_sv}

    def assign_primitives(self, features: torch.Tensor) -> torch.Tensor | None:
        """Nearest centroid of each normalised point feature (…, D), or None before any clustering."""
        return None if not len(self.centroids) else (F.normalize(features, dim=-1) @ self.centroids.T).argmax(-1)

    def teacher_points(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.teacher_feats[ids], self.teacher_valid[ids]

    def forward(self, x, y, neighbours=None, ids=None) -> StepOutput:
        with feature_taps(self.student, self.layer) as taps:
            logits = self.student(x, neighbours)
        s = taps[self.layer]
        if self.stage == "cmd":
            t, valid = self.teacher_points(ids)
            per = masked_normalised_mse(self.align(s), t, valid, reduction="none")
            shown = {"student_loss": per.detach(), "term_cmd": per.detach(), "weight": valid.float().mean(1)}
            return StepOutput(logits, {"cmd": per.mean()}, shown)
        weight = self.head.weight if self.stage == "warmup" else self.centroids
        cos = F.normalize(s, dim=-1) @ F.normalize(weight, dim=-1).T
        ce = F.cross_entropy((cos / self.p["temperature"]).transpose(1, 2), self.pseudo[ids], reduction="none").mean(1)
        shown = {"student_loss": ce.detach(), "term_svc": ce.detach(), "pseudo_purity": self.purity[ids]}
        return StepOutput(logits, {"svc": ce.mean()}, shown)

    def epoch_metrics(self, task) -> dict[str, float]:
        return dict(self.round_metrics)
