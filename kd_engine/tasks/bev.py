"""BEV heatmap detection: objects as centre peaks on a bird's-eye-view grid (CenterPoint-style).

- Batches: ``(x, heatmap)`` with keyword maps ``reg`` (B, 4, h, w) and ``reg_mask`` (B, h, w) of
  the scenes (`kd_engine.data.bev`); order and DDP padding are classification's.
  A method that sets ``wants_boxes = True`` also gets ``boxes``: per scene, its (M, 5) boxes
  [cx, cy, length, width, yaw] in cells of the output map (masks from footprints need the yaw).
- Rows per training scene: ``n_objects`` and the method's per-scene values (student and teacher
  detection loss, distillation terms, the weight when there is one, the regions a method
  selected and their disparity).
- Evaluation: per role, the top 30 heatmap peaks of each scene become (class, score, x, y)
  detections (`kd_engine.bev_metrics.decode`), scored by centre-distance AP within 1 m per class
  (``AP_<class>``) and its mean over the classes (``mAP``), plus the detection loss. Per scene:
  each role's loss and true/false positives and misses at score ≥ 0.3, and ``disparity``, the
  mean over cells of the summed binary KL between teacher and student heatmaps.
- Artifacts of the final pass (``kind="bev_map"``, the first ``record.attention_maps`` scenes, at
  most 16): the BEV input, the true heatmaps, each role's heatmaps (probabilities), the
  per-cell heatmap disparity and, when the method compares feature maps (`region_view`), the
  window feature disparity map and the regions it selected (``kind="bev_regions"``, rows of
  scene position, row, column, disparity, foreground); every other ``<name>_map`` the
  view returns (a method's masks or attention) is saved as ``bev/<split>/<name>``.
"""
from __future__ import annotations

import re

import numpy as np
import torch

from kd_engine.data.bev_boxes import metric_to_cells
from kd_engine.bev_metrics import centre_distance_ap, decode, match_counts
from kd_engine.losses.bev import binary_kl_map
from kd_engine.methods.bev_base import BEV_METHODS, bev_forward, detection_loss
from kd_engine.tasks.base import TASKS, Artifact, Batch, Evaluation
from kd_engine.tasks.classification import ClassificationTask

PROBE_LIMIT = 16  # probe scenes whose maps are saved, at most
MATCH_RADIUS = 1.0  # metres between a detected and a true centre
COUNT_THRESHOLD = 0.3  # score from which a detection counts in the per-scene tp/fp columns
REGION_COLUMNS = ["scene", "row", "col", "disparity", "foreground"]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", name)


@TASKS.register("bev")
class BEVTask(ClassificationTask):
    name = "bev"
    methods = BEV_METHODS
    headline = ("mAP",)

    def __init__(self, cfg, data, device, ctx, autocast):
        super().__init__(cfg, data, device, ctx, autocast)
        self.distiller = None
        self._teacher_eval: dict[str, tuple] = {}

    def bind(self, distiller) -> None:
        self.distiller = distiller  # for the method's region view of the probe scenes

    # -- training -------------------------------------------------------------------------------
    def batches(self, epoch: int, wants_ids: bool = False):
        train = self.data.train
        for batch in super().batches(epoch, wants_ids):
            rows = torch.as_tensor(train.positions(batch.ids.tolist()))
            batch.inputs = (batch.inputs[0], train.heatmap[rows].to(self.device, non_blocking=True))
            batch.kwargs.update(reg=train.reg[rows].to(self.device, non_blocking=True),
                                reg_mask=train.reg_mask[rows].to(self.device, non_blocking=True))
            if getattr(self.distiller, "wants_boxes", False):
                batch.kwargs["boxes"] = self.map_boxes(train, rows.tolist())
            yield batch

    def map_boxes(self, dataset, rows) -> list:
        """The boxes of scenes ``rows`` in cells of the output map, (M, 5) [cx, cy, l, w, yaw] each
        (`kd_engine.data.bev_boxes.metric_to_cells`), for methods that set ``wants_boxes``."""
        side = self.data.meta["heatmap_side"]
        return [metric_to_cells(dataset.boxes[i], self.data.meta["output_cell"], side) for i in rows]

    def train_rows(self, out, batch: Batch, step: int, epoch: int) -> dict[str, torch.Tensor]:
        rows = torch.as_tensor(self.data.train.positions(batch.ids.tolist()))
        return self.per_sample_rows(out, batch, step, epoch, n_objects=self.data.train.y[rows])

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def _predict(self, model, dataset) -> tuple[torch.Tensor, list[np.ndarray], np.ndarray]:
        """A model's heatmap logits (CPU), detections per scene and per-scene loss on a split."""
        was_training = model.training
        model.eval()
        logits, dets, losses = [], [], []
        size = self.cfg.data.eval_batch_size
        for start in range(0, len(dataset), size):
            rows = slice(start, start + size)
            with self.autocast():
                z, regression, _ = bev_forward(model, dataset.x[rows].to(self.device))
            z, regression = z.float().cpu(), regression.float().cpu()
            logits.append(z)
            dets += decode(z, regression, self.data.meta["output_cell"])
            losses.append(detection_loss(z, regression, dataset.heatmap[rows], dataset.reg[rows],
                                         dataset.reg_mask[rows]).numpy())
        model.train(was_training)
        return torch.cat(logits), dets, np.concatenate(losses) if losses else np.zeros(0)

    def evaluate(self, split, student, teacher, final=False) -> Evaluation:
        dataset = getattr(self.data, split)
        predictions = {"student": self._predict(student, dataset)}
        if teacher is not None:
            if split not in self._teacher_eval:  # the teacher is frozen: evaluate it once
                self._teacher_eval[split] = self._predict(teacher, dataset)
            predictions["teacher"] = self._teacher_eval[split]
        metrics: dict[str, float] = {}
        columns = {"instance_id": dataset.ids.numpy(), "n_objects": dataset.y.numpy()}
        for role, (_, dets, losses) in predictions.items():
            ap = centre_distance_ap(dets, dataset.boxes, self.data.num_classes, MATCH_RADIUS)
            metrics[f"{split}/{role}_mAP"] = float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")
            metrics.update({f"{split}/{role}_AP_{_safe(n)}": float(v)
                            for n, v in zip(self.data.class_names, ap) if np.isfinite(v)})
            metrics[f"{split}/{role}_loss"] = float(losses.mean()) if len(losses) else float("nan")
            counts = np.asarray([match_counts(d, b, MATCH_RADIUS, COUNT_THRESHOLD)
                                 for d, b in zip(dets, dataset.boxes)]).reshape(-1, 3)
            columns.update({f"{role}_loss": losses, f"{role}_tp": counts[:, 0], f"{role}_fp": counts[:, 1],
                            f"{role}_missed": counts[:, 2]})
        kl = None
        if teacher is not None:
            kl = binary_kl_map(predictions["student"][0], predictions["teacher"][0])
            columns["disparity"] = kl.flatten(1).mean(1).numpy()
            metrics[f"{split}/disparity"] = float(columns["disparity"].mean())
        probe = min(len(dataset), self.cfg.record.attention_maps, PROBE_LIMIT) if final else 0
        artifacts = self._probe_artifacts(split, dataset, probe, predictions, kl) if probe else []
        return Evaluation(metrics, columns, artifacts)

    def _probe_artifacts(self, split, dataset, probe, predictions, kl) -> list[Artifact]:
        meta = {"instance_ids": dataset.ids[:probe].tolist(), "split": split,
                "class_names": list(self.data.class_names), "channels": self.data.meta["channels"],
                "cell": self.data.meta["cell"], "output_cell": self.data.meta["output_cell"]}

        def art(what: str, array, role=None, kind="bev_map") -> Artifact:
            return Artifact(f"bev/{split}/{what}", np.asarray(array, dtype=np.float32), kind=kind, role=role,
                            meta={**meta, "map": what})

        out = [art("input", dataset.x[:probe]), art("true_heatmap", dataset.heatmap[:probe])]
        out += [art(f"{role}_heatmap", torch.sigmoid(z[:probe]), role) for role, (z, _, _) in predictions.items()]
        if kl is not None:
            out.append(art("heatmap_disparity", kl[:probe]))
        view = getattr(self.distiller, "region_view", None)
        if view is not None and getattr(self.distiller, "teacher", None) is not None:
            was_training = self.distiller.training
            self.distiller.eval()
            with self.autocast():
                extra = {"boxes": self.map_boxes(dataset, range(probe))} if getattr(self.distiller, "wants_boxes", False) else {}
                chosen = view(dataset.x[:probe].to(self.device), dataset.reg_mask[:probe].to(self.device), **extra)
            self.distiller.train(was_training)
            out.append(art("feature_disparity", chosen["disparity_map"].float().cpu()))
            out += [art(key[: -len("_map")], value.float().cpu()) for key, value in chosen.items()
                    if key.endswith("_map") and key != "disparity_map"]
            if "index" in chosen:
                out.append(art("regions", _region_rows(chosen, dataset.heatmap.shape[-1]), kind="bev_regions"))
        return out

    # -- what the dashboard needs -----------------------------------------------------------------
    def save_inputs(self, writer) -> None:
        super().save_inputs(writer)
        rows = [[int(i), *b] for split in (self.data.train, self.data.val, self.data.test)
                for i, boxes in zip(split.ids.tolist(), split.boxes) for b in boxes.tolist()]
        writer.save_artifact("gt_boxes", np.asarray(rows, dtype=np.float64).reshape(-1, 7), kind="boxes",
                             dtype="float64", meta={"columns": ["image_id", "label", "x", "y", "length", "width", "yaw"],
                                                    "class_names": list(self.data.class_names)})

    def run_meta(self, distiller) -> dict:
        meta = self.data.meta
        return {"task": "bev", "class_names": list(self.data.class_names), "channels": meta["channels"],
                "cell": meta["cell"], "output_cell": meta["output_cell"]}


def _region_rows(chosen: dict, width: int) -> np.ndarray:
    """(scene position, row, column, disparity, foreground) of every kept region of a batch."""
    index, valid = chosen["index"].cpu(), chosen["valid"].cpu()
    scene = torch.arange(len(index))[:, None].expand_as(index)
    rows = torch.stack([scene.float(), (index // width).float(), (index % width).float(),
                        chosen["disparity"].float().cpu(), chosen["foreground"].float().cpu()], dim=2)
    return rows[valid].numpy()
