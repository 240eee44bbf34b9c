"""Per-azimuth dense prediction of rooms: depth and wall/obstacle per azimuth (for SAM).

- Batches: ``(x, y)`` with ``x`` the (B, 5, T) room inputs (`kd_engine.data.room_echoes`: echoes
  and panorama channels; each model reads its own), ``y`` the (B, A) labels and keyword
  ``depth`` (B, A) metres; the order and DDP padding are classification's.
- Rows per training room: the method's per-room values (task loss, its depth and label parts,
  the teacher's loss, alignment or direct-KD loss).
- Evaluation, per role (student, teacher): ``rmse`` (root mean squared depth error over every
  azimuth of the split, m), ``abs_rel`` (mean |d̂ − d| / d), ``mIoU`` of wall/obstacle from one
  confusion matrix over the split's azimuths, ``IoU_<class>``; per room the same (``rmse``,
  ``abs_rel``, ``miou``) plus the method's own per-room values (``room_values``: SAM's
  alignment loss).
- Artifacts of the final pass (first ``record.attention_maps`` rooms, at most 16;
  ``kind="azimuth_map"``): the true, student and teacher depth and label maps (rooms × A), the
  echoes (rooms × 2 × T) and, for a student with query aligners, each aligner's cross-attention
  (rooms × A × tokens, ``kind="echo_attention"``). Once per run: the rooms' geometry
  (``rooms/geometry``, ``kind="room_geometry"``) for drawing them.
"""
from __future__ import annotations

import numpy as np
import torch

from kd_engine.dense_metrics import iou_per_class, pixel_confusion
from kd_engine.methods.echo_base import ECHO_METHODS, room_losses
from kd_engine.models import feature_taps
from kd_engine.tasks.base import TASKS, Artifact, Batch, Evaluation
from kd_engine.tasks.classification import ClassificationTask

PROBE_LIMIT = 16  # rooms whose maps are saved, at most


def abs_rel(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per row, the mean over positions of |pred − true| / true (the usual depth abs-rel; true > 0)."""
    true, pred = np.asarray(true, np.float64), np.asarray(pred, np.float64)
    return (np.abs(pred - true) / true).reshape(len(true), -1).mean(1)


@TASKS.register("echo_depth")
class EchoDepthTask(ClassificationTask):
    name = "echo_depth"
    methods = ECHO_METHODS
    headline = ("rmse", "abs_rel", "mIoU")

    def __init__(self, cfg, data, device, ctx, autocast):
        super().__init__(cfg, data, device, ctx, autocast)
        self.distiller = None
        self._teacher_eval: dict[str, tuple] = {}

    def bind(self, distiller) -> None:
        self.distiller = distiller  # for the method's per-room values at evaluation

    # -- training -------------------------------------------------------------------------------
    def batches(self, epoch: int, wants_ids: bool = False):
        train = self.data.train
        for batch in super().batches(epoch, wants_ids):
            rows = torch.as_tensor(train.positions(batch.ids.tolist()))
            batch.kwargs["depth"] = train.depth[rows].to(self.device, non_blocking=True)
            yield batch

    def step_scalars(self, out) -> dict[str, torch.Tensor]:
        return {f"train/{k}": v.float().mean() for k, v in out.per_sample.items()}

    def train_rows(self, out, batch: Batch, step: int, epoch: int) -> dict[str, torch.Tensor]:
        return self.per_sample_rows(out, batch, step, epoch)

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def _predict(self, model, dataset, values=None) -> dict[str, np.ndarray]:
        """A model's outputs on a split in eval mode: ``output`` (N, 1 + K, A), ``loss``, the
        attention of its query aligners (``attention/<stage>``) and the method's per-room values."""
        was_training = model.training
        model.eval()
        if self.distiller is not None:
            self.distiller.eval()
        layers = list(getattr(model, "attention_layers", []))
        parts: dict[str, list] = {}
        size = self.cfg.data.eval_batch_size
        for start in range(0, len(dataset), size):
            rows = slice(start, start + size)
            x = dataset.x[rows].to(self.device)
            with self.autocast(), feature_taps(model, layers) as taps:
                out = model(x).float()
            found = {"output": out, "loss": room_losses(out, dataset.y[rows].to(self.device),
                                                          dataset.depth[rows].to(self.device))["total"],
                     **{f"attention/{n.split('.')[1]}": taps[n].float() for n in layers}}
            if values is not None:
                with self.autocast():
                    found.update(values(x))
            for key, value in found.items():
                parts.setdefault(key, []).append(value.float().cpu().numpy())
        model.train(was_training)
        if self.distiller is not None:
            self.distiller.train(was_training)
        return {k: np.concatenate(v) for k, v in parts.items()}

    def evaluate(self, split, student, teacher, final=False) -> Evaluation:
        dataset = getattr(self.data, split)
        if not len(dataset):
            return Evaluation({}, {})
        values = getattr(self.distiller, "room_values", None)
        predictions = {"student": self._predict(student, dataset, values)}
        if teacher is not None:
            if split not in self._teacher_eval:  # the teacher is frozen: evaluate it once
                self._teacher_eval[split] = self._predict(teacher, dataset)
            predictions["teacher"] = self._teacher_eval[split]
        true_depth, labels = dataset.depth.numpy(), dataset.y.numpy()
        columns: dict[str, np.ndarray] = {"instance_id": dataset.ids.numpy()}
        metrics: dict[str, float] = {}
        k = self.data.num_classes
        for role, found in predictions.items():
            depth, pred = found["output"][:, 0], found["output"][:, 1:].argmax(1)
            sq = (depth - true_depth) ** 2
            rel = abs_rel(true_depth, depth)
            columns.update({f"{role}_rmse": np.sqrt(sq.mean(1)), f"{role}_abs_rel": rel, f"{role}_loss": found["loss"],
                            f"{role}_miou": np.asarray([np.nanmean(iou_per_class(pixel_confusion(t, p, k)))
                                                        for t, p in zip(labels, pred)])})
            iou = iou_per_class(pixel_confusion(labels, pred, k))
            metrics.update({f"{split}/{role}_rmse": float(np.sqrt(sq.mean())), f"{split}/{role}_abs_rel": float(rel.mean()),
                            f"{split}/{role}_mIoU": float(np.nanmean(iou)), f"{split}/{role}_loss": float(found["loss"].mean()),
                            **{f"{split}/{role}_IoU_{n}": float(v) for n, v in zip(self.data.class_names, iou)
                               if np.isfinite(v)}})
        for key, value in predictions["student"].items():
            if key not in ("output", "loss") and not key.startswith("attention/"):
                columns[key] = value
                metrics[f"{split}/{key}"] = float(value.mean())
        probe = min(len(dataset), self.cfg.record.attention_maps, PROBE_LIMIT) if final else 0
        return Evaluation(metrics, columns, self._artifacts(split, dataset, predictions, probe) if probe else [])

    def _artifacts(self, split, dataset, predictions, probe: int) -> list[Artifact]:
        meta = {"instance_ids": dataset.ids[:probe].tolist(), "split": split,
                "class_names": list(self.data.class_names)}

        def art(what, array, role=None, kind="azimuth_map", dtype="float32") -> Artifact:
            return Artifact(f"echo/{split}/{what}", np.asarray(array)[:probe], kind=kind, dtype=dtype, role=role,
                            meta={**meta, "map": what})

        out = [art("true_depth", dataset.depth.numpy()), art("true_label", dataset.y.numpy(), dtype="int16"),
               art("echoes", dataset.x[:, :2].numpy(), kind="echoes")]
        for role, found in predictions.items():
            out += [art(f"{role}_depth", found["output"][:, 0], role),
                    art(f"{role}_label", found["output"][:, 1:].argmax(1), role, dtype="int16")]
        out += [art(key.replace("/", "_"), value, "student", kind="echo_attention")
                for key, value in predictions["student"].items() if key.startswith("attention/")]
        return out

    # -- what the dashboard needs -----------------------------------------------------------------
    def save_inputs(self, writer) -> None:
        """The rooms' geometry (no image bank: the inputs are signals, shown from the artifacts)."""
        for split in ("train", "test"):
            dataset = getattr(self.data, split)
            writer.save_artifact(f"rooms/{split}", dataset.geometry, kind="room_geometry", dtype="float32",
                                 meta={"instance_ids": dataset.ids.tolist(), "split": split,
                                       "columns": "width, height, listener x, listener y, then boxes x0 y0 x1 y1"})

    def probe_inputs(self, count: int):
        return None

    def run_meta(self, distiller) -> dict:
        student = distiller.student
        return {"task": "echo_depth", "azimuths": self.data.meta["azimuths"],
                "time_bins": self.data.meta["time_bins"], "max_range": self.data.meta["max_range"],
                "aligned": list(getattr(student, "aligned", []))}
