"""The training loop for detection runs (``train`` dispatches here for a detection dataset).

It is the classification ``_Loop`` with detection batches (lists of images and box targets),
COCO mAP instead of accuracy, and per-(image, FPN level) records; the store, checkpoints,
resume, SIGTERM and non-finite-loss handling are inherited, so both kinds of run behave alike.
Evaluation runs in float32 even where training uses bf16: box decoding wants the precision.
"""
from __future__ import annotations

import logging
import math
import os
import re
import time

import numpy as np
import torch

from kd_engine.cache import build_teacher
from kd_engine.data import DATASETS
from kd_engine.data.detection.coco import detection_collate
from kd_engine.detection_metrics import coco_map, per_image_detection_records, predict_detections
from kd_engine.errors import ConfigError
from kd_engine.methods.detection_base import DETECTION_METHODS
from kd_engine.models import build_model
from kd_engine.store.schema import CORE_INSTANCE_COLUMNS
from kd_engine.trainers import runtime
from kd_engine.trainers.loop import _Loop

log = logging.getLogger("kdw")

IMAGE_BANK_LIMIT = 16_000_000  # floats in the dashboard's image bank (~32 MB; 325 128-px scenes)
_INT_COLUMNS = {k for k, v in CORE_INSTANCE_COLUMNS.items() if v == "INTEGER"} | {"level", "gt"}


def train_detection(cfg, resume=None, distributed: bool = True, run_id: str | None = None):
    """Build data, student, teacher (trained and cached on first use) and method; run the loop."""
    if distributed and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("detection runs are single-process; start kdw train without torchrun")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = runtime.resolve_device(cfg.device)
    runtime.seed_everything(cfg.seed)
    split_seed = cfg.data.split_seed if cfg.data.split_seed is not None else cfg.seed
    data = DATASETS.get(cfg.data.name, field="data.name")(cfg.data, int(split_seed),
                                                           cache_dir=cfg.cache_dir)
    student = build_model(cfg.student, data.input_shape, data.num_classes, field="student")
    method = DETECTION_METHODS.get(cfg.method, field="method")
    if cfg.teacher is not None:  # report config mistakes before a teacher trains
        method(cfg, student, build_model(cfg.teacher, data.input_shape, data.num_classes,
                                         field="teacher"), data.input_shape)
    teacher, source = build_teacher(cfg, data.input_shape, data.num_classes)
    torch.manual_seed(cfg.seed + 1)  # the distillation head's init does not depend on the cache
    distiller = method(cfg, student, teacher, data.input_shape).to(device)
    return DetectionLoop(cfg, runtime.SINGLE, device, data, distiller, source, resume, run_id).run()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", name)


def _box_rows(dataset) -> np.ndarray:
    """(image_id, label, x0, y0, x1, y1) for every ground-truth box of a split."""
    rows = []
    for iid in dataset.ids:
        t = dataset.target(iid)
        for label, box in zip(t["labels"].tolist(), t["boxes"].tolist()):
            rows.append([iid, label, *box])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 6)


def _detection_rows(detections: list[dict], label_of: dict) -> np.ndarray:
    """(image_id, label, score, x0, y0, x1, y1) of COCO result dicts."""
    rows = [[d["image_id"], label_of[d["category_id"]], d["score"], d["bbox"][0], d["bbox"][1],
             d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]] for d in detections]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 7)


class DetectionLoop(_Loop):
    def __init__(self, cfg, ctx, device, data, distiller, teacher_source, resume, run_id=None):
        self._teacher_dets: dict[str, list] = {}
        self._last_val: dict[str, float] = {}
        super().__init__(cfg, ctx, device, data, distiller, teacher_source, resume, run_id)
        if resume is None:
            weighting = cfg.weighting if distiller.weighting is not None else None
            self.writer.set_meta(task="detection", levels=list(self.student.kd_levels),
                                 detector=self.student.kd_kind,
                                 category_names=self.data.category_names,
                                 granularity=(weighting.params.get("granularity", "per_image_level")
                                              if weighting and weighting.strategy == "aid" else None),
                                 alpha=(weighting.params.get("alpha", 0.1)
                                        if weighting and weighting.strategy == "aid" else None))

    # -- store and checkpoints ----------------------------------------------------------------
    def _save_images(self) -> None:
        """The image bank (training images first, as many as fit) and every GT box."""
        ids = [i for split in self.data.splits().values() for i in split.ids]
        h, w = self.data.input_shape[1:]
        keep = ids[: max(0, IMAGE_BANK_LIMIT // (3 * h * w))]
        images = self.data.images(keep) if keep else []
        if len(keep) and isinstance(images, np.ndarray) and images.ndim == 4:
            self.writer.save_images(np.asarray(keep), images)
        boxes = np.concatenate([_box_rows(s) for s in self.data.splits().values()])
        exact = not len(boxes) or boxes[:, 0].max() < 2 ** 24  # float32 holds ids exactly
        self.writer.save_artifact("gt_boxes", boxes, kind="boxes",
                                  dtype="float32" if exact else "float64",
                                  meta={"columns": ["image_id", "label", "x0", "y0", "x1", "y1"],
                                        "class_names": self.data.class_names})

    def _state(self, epoch: int) -> dict:
        return {**super()._state(epoch), "weighting": self.distiller.weighting_state()}

    def _restore(self, state: dict) -> None:
        super()._restore(state)
        self.distiller.load_weighting_state(state.get("weighting", {}))

    # -- training -----------------------------------------------------------------------------
    def _batches(self, epoch: int):
        train = self.data.train
        order = torch.randperm(len(train), generator=runtime.epoch_generator(self.cfg.seed, epoch))
        count = max(1, math.ceil(len(order) / self.cfg.data.batch_size))
        for chunk in torch.tensor_split(order, count):
            images, targets, ids = detection_collate([train[i] for i in chunk.tolist()])
            yield ([im.to(self.device, non_blocking=True) for im in images],
                   [{k: v.to(self.device) if torch.is_tensor(v) else v for k, v in t.items()}
                    for t in targets], ids)

    def _train_epoch(self, epoch: int) -> None:
        self.model.train()
        self.distiller.begin_epoch(epoch, self.cfg.epochs)
        rows, pending = [], []
        started = last_flush = time.perf_counter()
        seen = 0
        for images, targets, ids in self._batches(epoch):
            with self.autocast():
                out = self.model(images, targets)
            loss = self._optimize(out, epoch)
            if self.cfg.record.instances and out.rows is not None:
                batch_rows = out.rows()
                n = len(batch_rows["instance_id"])
                rows.append({**batch_rows, "epoch": np.full(n, epoch),
                             "step": np.full(n, self.global_step)})
            if self.global_step % self.cfg.record.scalars_every == 0:
                pending.append((self.global_step, self._step_scalars(out, loss)))
            seen += len(images)
            self.global_step += 1
            if time.perf_counter() - last_flush > 1.0:
                self._flush_scalars(pending, epoch)
                last_flush = time.perf_counter()
        self._write_instances(rows)
        self._flush_scalars(pending, epoch)
        elapsed = time.perf_counter() - started
        self.writer.log_scalars(self.global_step, epoch, {
            "throughput": seen / max(elapsed, 1e-9), "epoch_time": elapsed})

    def _step_scalars(self, out, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        values = {f"train/{k}": v.detach().float() for k, v in out.losses.items()}
        values.update({f"train/{k}": v.detach().float() for k, v in out.scalars.items()})
        values["train/loss"] = loss.detach().float()
        values["lr"] = torch.tensor(self.optimizer.param_groups[0]["lr"], device=loss.device)
        return values

    def _write_instances(self, rows: list[dict]) -> None:
        """All batches' rows in one write; a column some rows lack is -1 (ints) or NaN."""
        if not rows:
            return
        keys = list(dict.fromkeys(k for r in rows for k in r))
        columns = {}
        for key in keys:
            fill = -1 if key in _INT_COLUMNS else np.nan
            columns[key] = np.concatenate([r[key] if key in r else np.full(len(r["instance_id"]), fill)
                                           for r in rows])
        self.writer.log_instances({"split": np.full(len(columns["instance_id"]), "train"), **columns})

    # -- evaluation ---------------------------------------------------------------------------
    def _evaluate(self, split: str, epoch: int, record: bool = True, save: bool = False) -> dict:
        dataset = getattr(self.data, split)
        batch = self.cfg.data.eval_batch_size
        roles = {"student": predict_detections(self.student, dataset, self.device, batch)}
        if self.teacher is not None:
            if split not in self._teacher_dets:  # the teacher is frozen: evaluate it once
                self._teacher_dets[split] = predict_detections(self.teacher, dataset, self.device, batch)
            roles["teacher"] = self._teacher_dets[split]
        metrics: dict[str, float] = {}
        columns: dict[str, np.ndarray] = {}
        label_of = {c: label for label, c in dataset.label_to_cat.items()}
        for role, dets in roles.items():
            result = coco_map(dataset, dets)
            for key in ("mAP", "AP50", "AP75"):
                metrics[f"{split}/{role}_{key}"] = result[key]
            for name, ap in result["per_class_AP"].items():
                metrics[f"{split}/{role}_AP_{_safe(name)}"] = ap
            per_image = per_image_detection_records(dataset, dets)
            columns["instance_id"] = np.asarray([r["image_id"] for r in per_image])
            columns["n_gt"] = np.asarray([r["n_gt"] for r in per_image])
            for key in ("tp", "fp", "fn"):
                columns[f"{role}_{key}"] = np.asarray([r[key] for r in per_image])
            if save:
                self.writer.save_artifact(f"detections/{split}/{role}", _detection_rows(dets, label_of),
                                          kind="boxes", dtype="float64", role=role,
                                          meta={"columns": ["image_id", "label", "score", "x0", "y0",
                                                            "x1", "y1"], "split": split})
        if record:
            self._log_eval_instances(split, epoch, columns)
        return metrics

    def _end_of_epoch(self, epoch: int) -> None:
        due = (epoch + 1) % self.cfg.eval_every == 0 or epoch + 1 == self.cfg.epochs
        metrics = self._evaluate("val", epoch) if len(self.data.val) and due else {}
        self._last_val = metrics or self._last_val
        self.writer.log_scalars(self.global_step, epoch, metrics)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.endswith(("mAP", "AP50")))
        log.info("%s epoch %d/%d %s", self.cfg.name, epoch + 1, self.cfg.epochs, shown)
        self._checkpoint(epoch)
        self.writer.flush()
        self.writer.heartbeat()

    def _finish(self) -> None:
        final = dict(self._last_val)
        if len(self.data.test):
            test = self._evaluate("test", self.cfg.epochs - 1, save=True)
            self.writer.log_scalars(self.global_step, self.cfg.epochs - 1, test)
            final.update(test)
        final = {k: float(v) for k, v in final.items() if math.isfinite(v)}  # undefined APs dropped
        final["student_params"] = float(sum(p.numel() for p in self.student.parameters()))
        self.writer.set_meta(final_metrics=final)
        self.writer.set_status("finished")
        self.writer.event("finished")
