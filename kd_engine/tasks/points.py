"""Point clouds: a label per point, learned without labels (unsupervised segmentation).

- Data: scenes as instances (`kd_engine.data.rooms3d`): ``x`` (S, N, F) per-point features,
  ``y`` (S, N) classes (never shown to the method), ``neighbours`` (S, N, k) passed to the model.
- Batches: ``(x, y)`` of a few scenes, with ``neighbours`` and (for methods that want them)
  ``ids`` as keyword arguments; the order and DDP padding are classification's.
- Rows per training scene: step, epoch and the method's per-scene values (loss, ``weight``,
  ``term_*`` distillation terms, pseudo-label purity).
- Evaluation: the student's per-point features (its ``embedding_layer``, by forward hook) are
  clustered without labels, into the method's primitives when it has some (``assign_primitives``)
  or by k-means into ``PRIMITIVES``, whose centroids k-means merges into the class count
  (`kd_engine.cluster_metrics`); the clusters are Hungarian-matched to the classes over the whole
  split, giving mIoU, oAcc, mAcc and IoU per class; per scene the matched accuracy and mIoU under
  that split-level matching. The teacher's back-projected point features, where the method has
  them (``teacher_points``), are scored the same way over the points that have one (``coverage``).
- Artifacts of the final pass (``kind="point_cloud"``): for the first ``record.attention_maps``
  scenes (at least one, at most ``PROBE_LIMIT``), the points, true labels and matched student and
  teacher predictions (−1: no 2-D feature), the split's matched confusion matrices, and the
  method's last per-super-voxel pseudo-labels (``points/pseudo_labels``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kd_engine.cluster_metrics import cluster_points, match_clusters, merge_primitives
from kd_engine.methods.pointdc import POINT_METHODS
from kd_engine.models import feature_taps
from kd_engine.tasks.base import TASKS, Artifact, Batch, Evaluation
from kd_engine.tasks.classification import ClassificationTask

PRIMITIVES = 20  # k-means clusters of the features before the merge into the classes
PROBE_LIMIT = 8


def matched_labels(features: np.ndarray, num_classes: int, seed: int, primitives=None, centroids=None) -> np.ndarray:
    """Unmatched class-cluster ids of L2-normalised point features (P, D): through the given
    primitive assignment and centroids, or by k-means (`cluster_points`)."""
    if primitives is None:
        return cluster_points(features, num_classes, PRIMITIVES, seed)
    return merge_primitives(centroids, num_classes, seed)[primitives]


@TASKS.register("points")
class PointTask(ClassificationTask):
    name = "points"
    methods = POINT_METHODS
    headline = ("mIoU", "oAcc")

    def bind(self, distiller) -> None:
        self.distiller = distiller  # teacher point features and primitives live in the method

    def batches(self, epoch: int, wants_ids: bool = False):
        train = self.data.train
        for batch in super().batches(epoch, wants_ids):
            positions = torch.as_tensor(train.positions(batch.ids.tolist()))
            batch.kwargs["neighbours"] = train.neighbours[positions].to(self.device, non_blocking=True)
            yield batch

    def step_scalars(self, out) -> dict[str, torch.Tensor]:
        return {f"train/{k.replace('term_', 'term/')}": v.float().mean() for k, v in out.per_sample.items()}

    def train_rows(self, out, batch: Batch, step: int, epoch: int) -> dict[str, torch.Tensor]:
        return self.per_sample_rows(out, batch, step, epoch)

    @torch.no_grad()
    def student_features(self, student, split: str) -> np.ndarray:
        dataset = getattr(self.data, split)
        layer = getattr(student, "embedding_layer", "features")
        was = student.training
        student.eval()
        out = []
        for start in range(0, len(dataset), self.cfg.data.eval_batch_size):
            rows = slice(start, start + self.cfg.data.eval_batch_size)
            with feature_taps(student, layer) as taps, self.autocast():
                student(dataset.x[rows].to(self.device), dataset.neighbours[rows].to(self.device))
            out.append(F.normalize(taps[layer].float(), dim=-1).cpu())
        student.train(was)
        return torch.cat(out).numpy()

    def evaluate(self, split, student, teacher, final=False) -> Evaluation:
        dataset = getattr(self.data, split)
        y, k, seed = dataset.y.numpy(), self.data.num_classes, int(self.cfg.seed)
        method = getattr(self, "distiller", None)
        # a method that names points itself (zero-shot, UP-VL) is scored as named, without matching
        named = method.point_predictions(split) if hasattr(method, "point_predictions") else None
        if named is not None:
            clusters = np.asarray(named)
        else:
            feats = self.student_features(student, split)
            primitives = method.assign_primitives(torch.as_tensor(feats)) if hasattr(method, "assign_primitives") else None
            if primitives is not None:
                clusters = matched_labels(feats, k, seed, primitives.numpy().reshape(-1), method.centroids.cpu().numpy())
            else:
                clusters = matched_labels(feats.reshape(-1, feats.shape[-1]), k, seed)
        roles = {"student": (clusters.reshape(y.shape), np.ones(y.shape, bool))}
        if hasattr(method, "teacher_points"):
            t_feats, valid = (v.cpu().numpy() for v in method.teacher_points(dataset.ids.to(method.teacher_feats.device)))
            t_clusters = np.full(y.shape, -1)
            t_clusters[valid] = matched_labels(t_feats[valid], k, seed)
            roles["teacher"] = (t_clusters, valid)
        metrics, columns, preds, confusions = {}, {"instance_id": dataset.ids.numpy()}, {}, {}
        for role, (c, valid) in roles.items():
            scores = match_clusters(y[valid], c[valid], k, named=role == "student" and named is not None)
            pred = np.where(valid, scores.mapping[np.maximum(c, 0)], -1)
            preds[role], confusions[role] = pred, scores.confusion
            metrics.update({f"{split}/{role}_mIoU": scores.miou, f"{split}/{role}_oAcc": scores.oacc,
                            f"{split}/{role}_mAcc": scores.macc})
            metrics.update({f"{split}/{role}_IoU_{n}": float(v) for n, v in zip(self.data.class_names, scores.iou)
                            if np.isfinite(v)})
            columns[f"{role}_matched_acc"] = np.array([(p[m] == t[m]).mean() if m.any() else np.nan
                                                       for p, t, m in zip(pred, y, valid)])
            columns[f"{role}_mIoU"] = np.array([match_clusters(t[m], np.maximum(p[m], 0), k).miou
                                                if m.any() else np.nan for p, t, m in zip(pred, y, valid)])
            if role == "teacher":
                columns["coverage"] = valid.mean(1)
                metrics[f"{split}/teacher_coverage"] = float(valid.mean())
        artifacts = self._artifacts(split, dataset, preds, confusions, method) if final else []
        return Evaluation(metrics, columns, artifacts)

    def _artifacts(self, split, dataset, preds, confusions, method) -> list[Artifact]:
        probe = min(len(dataset), max(1, self.cfg.record.attention_maps), PROBE_LIMIT)
        meta = {"instance_ids": dataset.ids[:probe].tolist(), "split": split,
                "class_names": list(self.data.class_names)}

        def art(what: str, array, role=None, dtype="int16") -> Artifact:
            return Artifact(f"points/{split}/{what}", np.asarray(array), kind="point_cloud", dtype=dtype,
                            role=role, meta={**meta, "map": what})

        out = [art("xyz", dataset.xyz[:probe], dtype="float32"), art("true", dataset.y[:probe].numpy())]
        for role, pred in preds.items():
            out.append(art(f"{role}_pred", pred[:probe], role))
            out.append(art(f"{role}_confusion", confusions[role], role, dtype="float32"))
        decisions = getattr(method, "decisions", None)
        if decisions:
            out.append(Artifact("points/pseudo_labels", decisions["pseudo_labels"], kind="point_decisions",
                                dtype="int16", epoch=decisions["epoch"],
                                meta={"instance_ids": decisions["scene_ids"], "what": "pseudo-label per super-voxel"}))
        if hasattr(method, "point_artifacts"):  # a method's own records (keyword arguments of Artifact)
            out += [Artifact(**spec) for spec in method.point_artifacts(split)]
        return out

    def save_inputs(self, writer) -> None:
        """Nothing beyond the records: the probe scenes' points travel in the final artifacts."""

    def probe_inputs(self, count: int):
        return None

    def run_meta(self, distiller) -> dict:
        return {"task": "points", "class_names": list(self.data.class_names),
                "features": list(self.data.meta.get("features", []))}
