"""Dense prediction: a label per pixel (and optionally a continuous map such as depth).

- Batches: ``(x, y)`` with ``y`` the (B, H, W) label map, and ``maps={"depth": (B, H, W)}`` when
  the data has continuous maps; the order and DDP padding are classification's.
- Rows per training image: the method's per-image values (teacher and student loss, weight,
  distillation terms) plus the student's and teacher's pixel accuracy and the share of pixels
  where their predicted classes differ (``disagreement``).
- Evaluation: mIoU and IoU per class from one confusion matrix over the split's pixels, pixel
  accuracy, the task loss, with a depth head RMSE, and with an edge head the edge F1 (pixels with
  sigmoid(edge logit) >= 0.5 against the true edges, counted over the split); per image the same
  plus ``disparity``, the mean over pixels of KL(teacher ‖ student) at T = 1.
- Artifacts of the final pass (``kind="dense_map"``): for the first ``record.attention_maps``
  images of the split, the true, student and teacher label maps, the per-pixel disparity map and,
  per continuous output (depth; edges as probabilities), the true, student and teacher maps and
  their disparity |teacher − student| (``depth_disparity``, ``edges_disparity``); the images are
  in the image bank.
"""
from __future__ import annotations

import re

import numpy as np
import torch

from kd_engine.dense_metrics import edge_counts, f1_from_counts, iou_per_class, pixel_confusion
from kd_engine.losses.dense import pixel_kl_map
from kd_engine.methods.dense import DENSE_METHODS, dense_predict, predict_losses
from kd_engine.tasks.base import TASKS, Artifact, Batch, Evaluation
from kd_engine.tasks.classification import ClassificationTask

PROBE_LIMIT = 16  # probe images whose maps are saved, at most


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", name)


class _Accumulator:
    """One role's predictions over a split: the pixel confusion matrix, per-image columns, and the
    probe images' maps."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.columns: dict[str, list[np.ndarray]] = {}
        self.sq_error, self.pixels = 0.0, 0
        self.edge_counts = np.zeros(3, dtype=np.int64)  # TP, FP, FN over the split
        self.masks: list[np.ndarray] = []
        self.outputs: dict[str, list[np.ndarray]] = {}  # probe maps per continuous output

    @staticmethod
    def shown(preds: dict) -> dict:
        """The continuous outputs as drawn and compared: depth as predicted, edges as probabilities."""
        return {name: torch.sigmoid(value) if name == "edges" else value for name, value in preds.items()}

    def add(self, logits, preds: dict, y, maps, probe: int) -> None:
        pred = logits.argmax(1)
        true = y.numpy()
        self.confusion += pixel_confusion(true, pred.numpy(), self.num_classes)
        losses = predict_losses(logits, y, preds, maps)
        values = {"loss": losses["total"], "pixel_acc": (pred == y).float().flatten(1).mean(1)}
        miou = []
        for t, p in zip(true, pred.numpy()):
            iou = iou_per_class(pixel_confusion(t, p, self.num_classes))
            miou.append(np.nanmean(iou))
        values["miou"] = torch.as_tensor(np.asarray(miou))
        if "depth_mse" in losses:
            values["rmse"] = losses["depth_mse"].sqrt()
            self.sq_error += float(losses["depth_mse"].sum()) * y[0].numel()
            self.pixels += y.numel()
        shown = self.shown(preds)
        if "edge_bce" in losses:
            counts = [edge_counts(t, p) for t, p in zip(maps["edges"].numpy(), shown["edges"].numpy())]
            self.edge_counts += np.asarray(counts, dtype=np.int64).sum(axis=0)
            values["edge_f1"] = torch.as_tensor([f1_from_counts(*c) for c in counts])
        for key, value in values.items():
            self.columns.setdefault(key, []).append(value.numpy())
        if probe > 0:
            self.masks.append(pred[:probe].numpy())
            for name, value in shown.items():
                self.outputs.setdefault(name, []).append(value[:probe].numpy())

    def metrics(self, prefix: str, class_names: list[str]) -> dict[str, float]:
        iou = iou_per_class(self.confusion)
        out = {f"{prefix}_mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
               f"{prefix}_pixel_acc": float(np.trace(self.confusion) / max(self.confusion.sum(), 1)),
               f"{prefix}_loss": float(np.concatenate(self.columns["loss"]).mean())}
        out.update({f"{prefix}_IoU_{_safe(name)}": float(v) for name, v in zip(class_names, iou) if np.isfinite(v)})
        if self.pixels:
            out[f"{prefix}_rmse"] = float(np.sqrt(self.sq_error / self.pixels))
        if "edge_f1" in self.columns:
            out[f"{prefix}_edge_f1"] = f1_from_counts(*self.edge_counts.tolist())
        return out


@TASKS.register("dense")
class DenseTask(ClassificationTask):
    name = "dense"
    methods = DENSE_METHODS
    headline = ("mIoU", "rmse")

    # -- training -------------------------------------------------------------------------------
    def batches(self, epoch: int, wants_ids: bool = False):
        train = self.data.train
        for batch in super().batches(epoch, wants_ids):
            maps = getattr(train, "maps", {})
            if maps:
                positions = torch.as_tensor(train.positions(batch.ids.tolist()))
                batch.kwargs["maps"] = {k: v[positions].to(self.device, non_blocking=True) for k, v in maps.items()}
            yield batch

    def train_rows(self, out, batch: Batch, step: int, epoch: int) -> dict[str, torch.Tensor]:
        y, ids = batch.inputs[1], batch.ids
        s_pred = out.logits.detach().argmax(1)
        record = {"instance_id": ids, "step": torch.full_like(ids, step), "epoch": torch.full_like(ids, epoch),
                  "student_pixel_acc": (s_pred == y).float().flatten(1).mean(1)}
        if out.teacher_logits is not None:
            t_pred = out.teacher_logits.detach().argmax(1)
            record["teacher_pixel_acc"] = (t_pred == y).float().flatten(1).mean(1)
            record["disagreement"] = (t_pred != s_pred).float().flatten(1).mean(1)
        for key, value in out.per_sample.items():
            record[key] = value.detach().float()
        keep = batch.keep if self.ctx.world_size > 1 else None
        return {k: (v.detach().cpu() if keep is None else v.detach().cpu()[keep]) for k, v in record.items()}

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split, student, teacher, final=False) -> Evaluation:
        dataset = getattr(self.data, split)
        k = self.data.num_classes
        probe = min(len(dataset), self.cfg.record.attention_maps, PROBE_LIMIT) if final else 0
        roles = {"student": student, **({"teacher": teacher} if teacher is not None else {})}
        modes = {role: model.training for role, model in roles.items()}
        acc = {role: _Accumulator(k) for role in roles}
        disparity, disparity_maps = [], []
        batch_size = self.cfg.data.eval_batch_size
        for start in range(0, len(dataset), batch_size):
            rows = slice(start, start + batch_size)
            x, y = dataset.x[rows].to(self.device), dataset.y[rows]
            maps = {name: value[rows] for name, value in getattr(dataset, "maps", {}).items()}
            outputs = {}
            for role, model in roles.items():
                model.eval()
                with self.autocast():
                    logits, preds, _ = dense_predict(model, x)
                outputs[role] = (logits.float().cpu(), {k: v.float().cpu() for k, v in preds.items()})
                acc[role].add(*outputs[role], y, maps, max(0, probe - start))
            if teacher is not None:
                kl = pixel_kl_map(outputs["student"][0], outputs["teacher"][0], temperature=1.0)
                disparity.append(kl.flatten(1).mean(1).numpy())
                if probe > start:
                    disparity_maps.append(kl[: probe - start].numpy())
        for role, model in roles.items():
            model.train(modes[role])
        columns = {"instance_id": dataset.ids.numpy()}
        metrics: dict[str, float] = {}
        for role, a in acc.items():
            columns.update({f"{role}_{key}": np.concatenate(v) for key, v in a.columns.items()})
            metrics.update({f"{split}/{key}": v for key, v in a.metrics(role, self.data.class_names).items()})
        if disparity:
            columns["disparity"] = np.concatenate(disparity)
            metrics[f"{split}/disparity"] = float(columns["disparity"].mean())
        artifacts = self._probe_artifacts(split, dataset, probe, acc, disparity_maps) if probe else []
        return Evaluation(metrics, columns, artifacts)

    def _probe_artifacts(self, split, dataset, probe, acc, disparity_maps) -> list[Artifact]:
        meta = {"instance_ids": dataset.ids[:probe].tolist(), "split": split,
                "class_names": list(self.data.class_names)}

        def art(what: str, array, role=None, dtype="float32") -> Artifact:
            return Artifact(f"dense/{split}/{what}", np.asarray(array), kind="dense_map", dtype=dtype,
                            role=role, meta={**meta, "map": what})

        out = [art("true_mask", dataset.y[:probe].numpy(), dtype="int16")]
        for role, a in acc.items():
            out.append(art(f"{role}_mask", np.concatenate(a.masks), role, dtype="int16"))
            out += [art(f"{role}_{name}", np.concatenate(maps), role) for name, maps in a.outputs.items()]
        predicted = set().union(*(a.outputs for a in acc.values()))
        for name in sorted(predicted & set(getattr(dataset, "maps", {}))):
            out.append(art(f"true_{name}", dataset.maps[name][:probe].numpy()))
        if disparity_maps:
            out.append(art("disparity", np.concatenate(disparity_maps)))
        if {"teacher", "student"} <= set(acc):
            for name in sorted(set(acc["teacher"].outputs) & set(acc["student"].outputs)):
                gap = np.abs(np.concatenate(acc["teacher"].outputs[name]) - np.concatenate(acc["student"].outputs[name]))
                out.append(art(f"{name}_disparity", gap))
        return out

    # -- what the dashboard needs -----------------------------------------------------------------
    def run_meta(self, distiller) -> dict:
        outputs = sorted(getattr(distiller.student, "dense_outputs", {}))
        return {"task": "dense", "dense_outputs": outputs}
