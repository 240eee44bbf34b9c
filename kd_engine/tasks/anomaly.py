"""Unsupervised anomaly detection: train on normal images only, score every test image.

The method (an anomaly distiller, `kd_engine.methods.anomaly_base`) gives per-pixel anomaly maps;
the image score is the map's maximum. Metrics per split (role ``student``, the student–teacher
pair that scores): ``image_auroc`` (normal vs every anomaly), ``auroc_<kind>`` for each kind of
anomaly the dataset holds (``other_digit``, ``pasted_patch``), and ``pixel_auroc`` over the
pixels of the images with pixel ground truth (normal images and pasted patches), all by
scikit-learn's ROC AUC. A split without both normal and anomalous images has no AUROC.

Rows per training image: label (0, normal), step, epoch and the method's per-sample values
(``student_loss``: the cosine KD loss; ``memory_entropy``, ...). Rows per evaluated image: label
(1 = anomalous), ``kind``, source ``digit``, ``anomaly_score`` and the method's per-sample values.
Artifacts: the image bank, the pixel ground truth of the evaluation splits (``anomaly_masks``)
once, and every test image's anomaly map at the last test pass (``anomaly_maps/test``).
Training batches are the classification task's (shuffled by seed and epoch, DDP-padded).
"""
from __future__ import annotations

import numpy as np
import torch

from kd_engine.methods.anomaly_base import ANOMALY_METHODS
from kd_engine.metrics_extra import auroc
from kd_engine.tasks.base import TASKS, Artifact, Batch, Evaluation
from kd_engine.tasks.classification import ClassificationTask
from kd_engine.trainers.evaluate import batches


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower())


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """ROC AUC of every pixel of the images whose mask is known (no −1), or NaN without both
    anomalous and normal pixels."""
    known = (masks >= 0).reshape(len(masks), -1).all(1)
    truth, scores = masks[known].ravel(), maps[known].ravel()
    if not len(truth) or truth.min() == truth.max():
        return float("nan")
    return auroc(truth, scores)


@TASKS.register("anomaly")
class AnomalyTask(ClassificationTask):
    name = "anomaly"
    methods = ANOMALY_METHODS
    headline = ("image_auroc", "pixel_auroc")

    def bind(self, distiller) -> None:
        self.distiller = distiller  # scores come from the method's own student-teacher pass

    def step_scalars(self, out) -> dict[str, torch.Tensor]:
        return {f"train/{k}": v.float().mean() for k, v in out.per_sample.items()}

    def train_rows(self, out, batch: Batch, step: int, epoch: int) -> dict[str, torch.Tensor]:
        return self.per_sample_rows(out, batch, step, epoch, label=batch.inputs[1])

    @torch.no_grad()
    def score(self, split: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Anomaly maps (N, H, W) of a split, in eval mode, and the method's per-sample columns."""
        was_training = self.distiller.training
        self.distiller.eval()
        maps, columns = [], {}
        for x, _, _ in batches(getattr(self.data, split), self.cfg.data.eval_batch_size):
            with self.autocast():
                batch_maps, extra = self.distiller.anomaly_maps(x.to(self.device))
            maps.append(batch_maps.float().cpu())
            for key, value in extra.items():
                columns.setdefault(key, []).append(value.float().cpu())
        self.distiller.train(was_training)
        return torch.cat(maps).numpy(), {k: torch.cat(v).numpy() for k, v in columns.items()}

    def evaluate(self, split, student, teacher, final=False) -> Evaluation:
        dataset = getattr(self.data, split)
        maps, extra = self.score(split)
        scores = maps.reshape(len(maps), -1).max(1)
        labels, kinds = dataset.y.numpy(), dataset.kind
        columns = {"instance_id": dataset.ids.numpy(), "label": labels, "kind": kinds, "digit": dataset.digit,
                   "anomaly_score": scores, **extra}
        metrics: dict[str, float] = {}
        if labels.min() != labels.max():
            metrics[f"{split}/student_image_auroc"] = auroc(labels, scores)
            names = self.data.meta.get("kind_names", {})
            for kind in sorted(set(kinds[labels == 1].tolist())):
                keep = (labels == 0) | (kinds == kind)
                metrics[f"{split}/student_auroc_{_slug(names.get(kind, str(kind)))}"] = auroc(labels[keep], scores[keep])
            metrics[f"{split}/student_pixel_auroc"] = pixel_auroc(maps, dataset.masks)
            for label, name in ((0, "normal"), (1, "anomalous")):
                metrics[f"{split}/student_score_{name}"] = float(scores[labels == label].mean())
        artifacts = []
        if final:
            meta = {"instance_ids": columns["instance_id"].tolist(), "labels": labels.tolist(),
                    "kinds": np.asarray(kinds).tolist(), "split": split}
            artifacts.append(Artifact(f"anomaly_maps/{split}", maps, kind="anomaly_map", role="student", meta=meta))
        return Evaluation(metrics, columns, artifacts)

    def save_inputs(self, writer) -> None:
        super().save_inputs(writer)
        for split in ("val", "test"):
            dataset = getattr(self.data, split)
            if len(dataset):
                writer.save_artifact(f"anomaly_masks/{split}", dataset.masks, kind="anomaly_mask", dtype="float32",
                                     meta={"instance_ids": dataset.ids.tolist(), "split": split})

    def run_meta(self, distiller) -> dict:
        meta = self.data.meta
        return {"task": "anomaly", "layers": list(distiller.layers), "normal_class": meta.get("normal_class"),
                "kind_names": {str(k): v for k, v in meta.get("kind_names", {}).items()}}
