"""Object detection: lists of images with box targets, COCO mAP, per-(image, FPN level) rows.

Evaluation runs in float32 even where training uses bf16: box decoding wants the precision.
The dashboard's image bank holds as many images as fit (training images first) and every
ground-truth box; the last test pass saves each role's detections as a ``boxes`` artifact.
Under DDP every rank trains on its share of the epoch's images (padded to equal batch counts)
and records the rows of its own images once.
"""
from __future__ import annotations

import re

import numpy as np
import torch

from kd_engine.data.registry import DATASETS
from kd_engine.data.detection.coco import detection_collate
from kd_engine.detection_metrics import coco_map, per_image_detection_records, predict_detections
from kd_engine.methods.detection_base import DETECTION_METHODS
from kd_engine.store.schema import CORE_INSTANCE_COLUMNS
from kd_engine.tasks.base import TASKS, Artifact, Batch, Evaluation, Task

IMAGE_BANK_LIMIT = 16_000_000  # floats in the dashboard's image bank (~32 MB; 325 128-px scenes)
_INT_COLUMNS = ({k for k, v in CORE_INSTANCE_COLUMNS.items() if v == "INTEGER"}
                | {"level", "gt", "label_noise", "noisy"})
_BOX_COLUMNS = ["image_id", "label", "score", "x0", "y0", "x1", "y1"]


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


@TASKS.register("detection")
class DetectionTask(Task):
    name = "detection"
    methods = DETECTION_METHODS
    headline = ("mAP", "AP50")
    cross_fit = True  # teacher.cross_fit / data.holdout_fold: image ids route each image to its fold

    def setup(self) -> None:
        self._teacher_dets: dict[str, list] = {}
        self._method = None

    def bind(self, distiller) -> None:
        self._method = distiller  # for a method's own final artifacts (``detection_artifacts``)

    @classmethod
    def build_data(cls, cfg):
        split_seed = cfg.data.split_seed if cfg.data.split_seed is not None else cfg.seed
        bundle = DATASETS.get(cfg.data.name, field="data.name")(cfg.data, int(split_seed), cache_dir=cfg.cache_dir)
        if cfg.data.holdout_fold is not None:  # a cross-fitted teacher's training split
            fold, folds = cfg.data.holdout_fold
            bundle.train = bundle.train.subset([i for i in bundle.train.ids if int(i) % folds != fold])
        return bundle

    # -- training -------------------------------------------------------------------------------
    def batches(self, epoch: int, wants_ids: bool = False):
        train = self.data.train
        for chunk, keep in self.epoch_positions(epoch):
            images, targets, ids = detection_collate([train[i] for i in chunk.tolist()])
            yield Batch(inputs=([im.to(self.device, non_blocking=True) for im in images],
                                [{k: v.to(self.device) if torch.is_tensor(v) else v for k, v in t.items()}
                                 for t in targets]),
                        ids=torch.as_tensor(ids), size=len(images), keep=keep)

    def step_scalars(self, out) -> dict[str, torch.Tensor]:
        return {}

    def train_rows(self, out, batch: Batch, step: int, epoch: int):
        if out.rows is None:
            return None
        rows = out.rows()
        if batch.keep is not None and not bool(batch.keep.all()):  # drop the padding's rows
            padded = batch.ids[~batch.keep].numpy()
            mask = ~np.isin(rows["instance_id"], padded)
            rows = {k: np.asarray(v)[mask] for k, v in rows.items()}
        n = len(rows["instance_id"])
        return {**rows, **self._noise_columns(rows), "epoch": np.full(n, epoch), "step": np.full(n, step)}

    def _noise_columns(self, rows: dict) -> dict[str, np.ndarray]:
        """Where the generator corrupted labels: ``label_noise`` (the image's corrupted
        annotations, dropped ones included) on every row, and on per-GT rows ``noisy`` (1 if that
        box's written label is corrupted), so AID's weights can be scored against the truth."""
        train = self.data.train
        if getattr(train, "noise", None) is None:
            return {}
        ids = np.asarray(rows["instance_id"]).astype(np.int64)
        out = {"label_noise": np.asarray([train.noise.get(int(i), 0) for i in ids], dtype=np.int64)}
        if "gt" in rows:
            gt = np.asarray(rows["gt"]).astype(np.int64)
            noisy = np.full(len(ids), -1, dtype=np.int64)
            for k in np.flatnonzero(gt >= 0):
                noisy[k] = int(train.target(int(ids[k]))["noisy"][gt[k]])
            out["noisy"] = noisy
        return out

    def merge_rows(self, rows: list[dict]) -> dict[str, np.ndarray]:
        """All batches' rows; a column some rows lack is -1 (ints) or NaN."""
        if not rows:
            return {}
        keys = list(dict.fromkeys(k for r in rows for k in r))
        columns = {}
        for key in keys:
            fill = -1 if key in _INT_COLUMNS else np.nan
            columns[key] = np.concatenate([r[key] if key in r else np.full(len(r["instance_id"]), fill)
                                           for r in rows])
        return columns

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(self, split, student, teacher, final=False) -> Evaluation:
        dataset = getattr(self.data, split)
        batch = self.cfg.data.eval_batch_size
        roles = {"student": predict_detections(student, dataset, self.device, batch)}
        if teacher is not None:
            if split not in self._teacher_dets:  # the teacher is frozen: evaluate it once
                self._teacher_dets[split] = predict_detections(teacher, dataset, self.device, batch)
            roles["teacher"] = self._teacher_dets[split]
        metrics: dict[str, float] = {}
        columns: dict[str, np.ndarray] = {}
        artifacts: list[Artifact] = []
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
            if final:
                artifacts.append(Artifact(f"detections/{split}/{role}", _detection_rows(dets, label_of),
                                          kind="boxes", dtype="float64", role=role,
                                          meta={"columns": _BOX_COLUMNS, "split": split}))
        if final and hasattr(self._method, "detection_artifacts"):  # e.g. UniKD's query attention maps
            artifacts += [Artifact(**spec) for spec in self._method.detection_artifacts(split)]
        return Evaluation(metrics, columns, artifacts)

    # -- what the dashboard needs -----------------------------------------------------------------
    def save_inputs(self, writer) -> None:
        """The image bank (training images first, as many as fit) and every GT box."""
        ids = [i for split in self.data.splits().values() for i in split.ids]
        h, w = self.data.input_shape[1:]
        keep = ids[: max(0, IMAGE_BANK_LIMIT // (3 * h * w))]
        images = self.data.images(keep) if keep else []
        if len(keep) and isinstance(images, np.ndarray) and images.ndim == 4:
            writer.save_images(np.asarray(keep), images)
        boxes = np.concatenate([_box_rows(s) for s in self.data.splits().values()])
        exact = not len(boxes) or boxes[:, 0].max() < 2 ** 24  # float32 holds ids exactly
        writer.save_artifact("gt_boxes", boxes, kind="boxes", dtype="float32" if exact else "float64",
                             meta={"columns": ["image_id", "label", "x0", "y0", "x1", "y1"],
                                   "class_names": self.data.class_names})

    def run_meta(self, distiller) -> dict:
        weighting = distiller.weighting
        described = weighting.describe() if weighting is not None else {}
        return {"task": "detection", "levels": list(distiller.student.kd_levels),
                "detector": distiller.student.kd_kind, "category_names": self.data.category_names,
                "granularity": described.get("granularity"), "alpha": described.get("alpha")}
