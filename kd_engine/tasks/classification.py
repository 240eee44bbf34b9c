"""Classification: one label per image, logits out, accuracy and cross-entropy as metrics.

Rows per training instance: label, step, epoch, the student's (and teacher's) confidence and
prediction, and every per-sample value the method returned (``StepOutput.per_sample``). The
dashboard's image bank holds every split's images when they fit in 50 M floats; the feature
probe is the first images of the validation split (the training split when there is none).
"""
from __future__ import annotations

import numpy as np
import torch

from kd_engine.data import build_data
from kd_engine.data.base import augment_batch, save_sources
from kd_engine.data.loader import LoaderSettings, Loaders, epoch_plan, in_memory
from kd_engine.faults import fault_point
from kd_engine.methods import METHODS
from kd_engine.tasks.base import TASKS, Batch, Evaluation, Task
from kd_engine.trainers.evaluate import Predictions, batches, predict, probe_inputs

IMAGE_BANK_LIMIT = 50_000_000  # floats in the dashboard's image bank


@TASKS.register("classification")
class ClassificationTask(Task):
    name = "classification"
    methods = METHODS
    headline = ("acc",)

    def __init__(self, cfg, data, device, ctx, autocast):
        super().__init__(cfg, data, device, ctx, autocast)
        self._teacher_eval: dict[str, Predictions] = {}
        self._loaders: Loaders | None = None
        self._scalar_names: dict[tuple, dict[str, str]] = {}  # per-sample keys -> scalar names

    @classmethod
    def build_data(cls, cfg):
        return build_data(cfg.data, cfg.seed)

    # -- training -------------------------------------------------------------------------------
    @property
    def loaders(self) -> Loaders:
        """This run's DataLoaders for streamed splits (made on first use, kept for the run)."""
        if self._loaders is None:
            self._loaders = Loaders(LoaderSettings.of(self.cfg.data), self.cfg.seed, self.device,
                                    self.ctx.rank, self.ctx.world_size)
        return self._loaders

    def batches(self, epoch: int, wants_ids: bool = False):
        """This rank's batches: sliced from memory when the split is held there (the fast path),
        else streamed through a DataLoader; the same plan (`epoch_plan`) either way."""
        train, batch_size = self.data.train, self.cfg.data.batch_size
        if in_memory(train):
            plan = epoch_plan(len(train), self.cfg.seed, epoch, batch_size, self.ctx.rank, self.ctx.world_size)
            read = ((augment_batch(train, train.x[p]), train.y[p], train.ids[p], keep) for p, keep in plan)
        else:
            read = self.loaders.train(train, epoch, batch_size)
        try:
            for x, y, ids, keep in read:
                fault_point("train_batch")
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
                # methods on a teacher bank or per-instance targets need the ids
                kwargs = {"ids": ids.to(self.device)} if wants_ids else {}
                yield Batch(inputs=(x, y), ids=ids, size=len(y), keep=keep, kwargs=kwargs)
        except BaseException:  # a stop or a failure: the streaming workers end with the run
            self.close_loaders()
            raise
        if epoch + 1 >= self.cfg.epochs:
            self.close_loaders()

    def close_loaders(self) -> None:
        """End the streaming workers (after the last epoch, or when training stops early)."""
        if self._loaders is not None:
            self._loaders.close()

    def step_scalars(self, out) -> dict[str, torch.Tensor]:
        """The per-sample losses, weights and terms, recorded as their batch means."""
        keys = tuple(out.per_sample)
        names = self._scalar_names.get(keys)
        if names is None:  # the same keys every step: the names are made once
            names = self._scalar_names[keys] = {
                k: "train/weight_mean" if k == "weight" else "train/" + k.replace("term_", "term/")
                for k in keys if k in ("student_loss", "teacher_loss", "weight") or k.startswith("term_")}
        return {name: out.per_sample[k] for k, name in names.items()}

    def train_rows(self, out, batch: Batch, step: int, epoch: int) -> dict:
        """The batch's raw per-sample tensors, detached: what the rows are made of. The columns
        (confidences, predictions, step and epoch per row) are computed in `merge_rows`, once for
        a chunk of steps and on the store's writer thread, so the training step pays only for
        keeping references (a softmax per step cost ~3 % of a small model's step)."""
        record = {"instance_id": batch.ids, "label": batch.inputs[1].detach(), "_step": step, "_epoch": epoch,
                  "_student_logits": out.logits.detach()}
        if out.teacher_logits is not None:
            record["_teacher_logits"] = out.teacher_logits.detach()
        record.update({key: value.detach() for key, value in out.per_sample.items()})
        if self.ctx.world_size > 1:
            record["_keep"] = batch.keep
        return record

    def merge_rows(self, rows: list[dict]) -> dict[str, np.ndarray]:
        """Store columns from `train_rows`' raw batches: instance_id, label, step, epoch, the
        student's (and teacher's) confidence and prediction, then the method's per-sample values;
        DDP padding left out. Rows that are already columns (gathered from other ranks) are
        concatenated as they are."""
        if not rows or "_student_logits" not in rows[0]:
            return super().merge_rows(rows)
        sizes = [len(r["instance_id"]) for r in rows]
        cat = lambda key: torch.cat([r[key] for r in rows]).cpu()  # noqa: E731
        columns = {"instance_id": cat("instance_id"), "label": cat("label"),
                   "step": torch.as_tensor(np.repeat([r["_step"] for r in rows], sizes)),
                   "epoch": torch.as_tensor(np.repeat([r["_epoch"] for r in rows], sizes))}
        columns["student_conf"], columns["student_pred"] = cat("_student_logits").float().softmax(1).max(1)
        if "_teacher_logits" in rows[0]:
            columns["teacher_conf"], columns["teacher_pred"] = cat("_teacher_logits").float().softmax(1).max(1)
        columns.update({key: cat(key).float() for key in rows[0] if not key.startswith("_") and key not in columns})
        if "_keep" in rows[0]:
            keep = cat("_keep").bool()
            columns = {k: v[keep] for k, v in columns.items()}
        return {k: v.numpy() for k, v in columns.items()}

    # -- evaluation -----------------------------------------------------------------------------
    def predict(self, model, split: str) -> Predictions:
        """A model's logits on a split, in eval mode (for methods' evaluation hooks too)."""
        return predict(model, getattr(self.data, split), self.device, self.cfg.data.eval_batch_size,
                       self.autocast, self.loaders)

    def eval_batches(self, split: str):
        """(x, y, ids) CPU batches of a split in order, at the evaluation batch size."""
        return batches(getattr(self.data, split), self.cfg.data.eval_batch_size, self.loaders)

    def evaluate(self, split, student, teacher, final=False) -> Evaluation:
        prediction = self.predict(student, split)
        columns = {"instance_id": prediction.ids.numpy(), "label": prediction.labels.numpy(),
                   **prediction.per_sample("student")}
        metrics = {f"{split}/student_{k}": v for k, v in prediction.summary().items()}
        if teacher is not None:
            if split not in self._teacher_eval:  # the teacher is frozen: evaluate it once
                self._teacher_eval[split] = self.predict(teacher, split)
            teacher_prediction = self._teacher_eval[split]
            columns.update(teacher_prediction.per_sample("teacher"))
            metrics.update({f"{split}/teacher_{k}": v for k, v in teacher_prediction.summary().items()})
        return Evaluation(metrics, columns)

    # -- what the dashboard needs -----------------------------------------------------------------
    def save_inputs(self, writer) -> None:
        save_sources(writer, self.data)  # instance id -> file path / dataset index
        ids = np.concatenate([split.ids.numpy() for split in (self.data.train, self.data.val, self.data.test)])
        if ids.size * int(np.prod(self.data.input_shape)) <= IMAGE_BANK_LIMIT:
            writer.save_images(ids, self.data.images(ids))

    def probe_inputs(self, count: int):
        x, ids = probe_inputs(self.data.val if len(self.data.val) else self.data.train, count, self.loaders)
        return x.to(self.device), ids.tolist()
