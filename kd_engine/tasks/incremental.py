"""Class-incremental object classification: every image holds a few object slots (the 2×2 cells
of `kd_engine.data.incremental`), each labelled with a class or background, and the model
classifies every slot. The classes come in tasks (old, then new); what is measured is how much
of the old classes a model keeps while it learns the new ones.

Metrics per split and role (student; the frozen teacher when there is one), over the objects
of the split by their *true* digit (evaluation splits label every digit):
``old_acc`` (objects of old classes), ``new_acc`` (new classes), ``harmonic`` (2·old·new /
(old + new), the incremental-learning summary), ``background_acc`` (empty slots) and ``acc``
(every slot). With a teacher, ``student_df_corr`` and ``student_ds_corr``: the Pearson
correlation of the teacher's and student's old-class distance matrices (feature L2 between
class-mean features; Jensen–Shannon between class-mean soft predictions over the teacher's
known outputs), prototypes from the true classes of the split (`kd_engine.parts.prototypes`).

Rows per training object (one per image slot): ``cell``, ``label`` (the task's label, background
for unlabelled old objects), ``digit`` (the truth, −1 empty) and the method's per-object values
(WCBC: ``assigned``, ``source``, ``omega``, ...). Rows per evaluated object: ``cell``,
``digit``, ``label``, ``student_pred``, ``student_conf`` and the teacher's. Artifacts at the last
test pass: ``class_distances/test`` (kind ``class_distances``: (roles, 10, 10) feature-distance
matrices over the digits, teacher first when there is one). Training batches are the
classification task's.
"""
from __future__ import annotations

import numpy as np
import torch

from kd_engine.losses.class_structure import feature_distance_matrix, js_matrix
from kd_engine.methods.incremental_base import FEATURE_LAYER, INCREMENTAL_METHODS, object_pass
from kd_engine.parts.prototypes import class_prototypes, matrix_correlation
from kd_engine.tasks.base import TASKS, Artifact, Batch, Evaluation
from kd_engine.tasks.classification import ClassificationTask
from kd_engine.trainers.evaluate import batches


def harmonic(old: float, new: float) -> float:
    return 2 * old * new / (old + new) if old + new > 0 else 0.0


@TASKS.register("incremental")
class IncrementalTask(ClassificationTask):
    name = "incremental"
    methods = INCREMENTAL_METHODS
    headline = ("old_acc", "new_acc", "harmonic")

    def setup(self) -> None:  # the teacher's evaluation cache is ClassificationTask's `_teacher_eval`
        self.layer = FEATURE_LAYER
        meta = self.data.meta
        self.old, self.new, self.background = list(meta["old"]), list(meta["new"]), int(meta["background"])

    def bind(self, distiller) -> None:
        self.layer = getattr(distiller, "layer", FEATURE_LAYER)

    def step_scalars(self, out) -> dict[str, torch.Tensor]:
        values = {f"train/{k}": v.float().mean() for k, v in out.per_sample.items() if k.endswith("_loss")}
        if "source" in out.per_sample:
            source = out.per_sample["source"]
            values["train/teacher_assigned_share"] = (source == 2).float().mean()
        return values

    def train_rows(self, out, batch: Batch, step: int, epoch: int) -> dict[str, np.ndarray]:
        ids = batch.ids.numpy()
        cells = batch.inputs[1].shape[1]
        train = self.data.train
        digits = train.digits[train.positions(ids)].reshape(-1)
        record = {"instance_id": np.repeat(ids, cells), "cell": np.tile(np.arange(cells), len(ids)),
                  "label": batch.inputs[1].reshape(-1).cpu().numpy(), "digit": digits,
                  "step": np.full(len(digits), step), "epoch": np.full(len(digits), epoch),
                  **{k: v.detach().float().cpu().numpy() for k, v in out.per_sample.items()}}
        if batch.keep is None or bool(batch.keep.all()):
            return record
        keep = np.repeat(batch.keep.numpy(), cells)
        return {k: v[keep] for k, v in record.items()}

    @torch.no_grad()
    def objects(self, model, split: str) -> dict[str, np.ndarray]:
        """A model's per-object logits and features on a split (eval mode), flattened."""
        was_training = model.training
        model.eval()
        logits, features = [], []
        for x, _, _ in batches(getattr(self.data, split), self.cfg.data.eval_batch_size):
            with self.autocast():
                _, out = object_pass(model, x.to(self.device), self.layer)
            logits.append(out.logits.float().cpu())
            features.append(out.features.float().cpu())
        model.train(was_training)
        return {"logits": torch.cat(logits), "features": torch.cat(features)}

    def scores(self, out: dict, digits: np.ndarray) -> dict[str, float]:
        pred = out["logits"].argmax(1).numpy()
        truth = np.where(digits < 0, self.background, digits)
        correct = pred == truth
        old, new = np.isin(digits, self.old), np.isin(digits, self.new)
        metrics = {"acc": float(correct.mean()), "old_acc": float(correct[old].mean()) if old.any() else float("nan"),
                   "new_acc": float(correct[new].mean()) if new.any() else float("nan"),
                   "background_acc": float(correct[digits < 0].mean()) if (digits < 0).any() else float("nan")}
        metrics["harmonic"] = harmonic(metrics["old_acc"], metrics["new_acc"])
        return metrics

    def class_matrices(self, out: dict, digits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(10, 10) feature-distance and JS matrices of the class means over the true digits; the soft
        predictions are over the outputs a task-1 model knows (old classes and background)."""
        classes = torch.as_tensor(digits)
        known = self.old + [self.background]
        mu, _ = class_prototypes(out["features"], classes, 10, min_count=1)
        pi, _ = class_prototypes(out["logits"][:, known].softmax(1), classes, 10, min_count=1)
        return feature_distance_matrix(mu).numpy(), js_matrix(pi).numpy()

    def evaluate(self, split, student, teacher, final=False) -> Evaluation:
        dataset = getattr(self.data, split)
        digits = dataset.digits.reshape(-1)
        cells = dataset.digits.shape[1]
        s_out = self.objects(student, split)
        probs = s_out["logits"].softmax(1)
        s_conf, s_pred = probs.max(1)
        metrics = {f"{split}/student_{k}": v for k, v in self.scores(s_out, digits).items()}
        columns = {"instance_id": np.repeat(dataset.ids.numpy(), cells), "cell": np.tile(np.arange(cells), len(dataset)),
                   "digit": digits, "label": dataset.y.reshape(-1).numpy(),
                   "student_pred": s_pred.numpy(), "student_conf": s_conf.numpy()}
        s_df, s_ds = self.class_matrices(s_out, digits)
        matrices = [s_df]
        if teacher is not None:
            if split not in self._teacher_eval:  # the teacher is frozen: evaluate it once
                t_out = self.objects(teacher, split)
                self._teacher_eval[split] = {"out": t_out, "scores": self.scores(t_out, digits),
                                             "matrices": self.class_matrices(t_out, digits)}
            cached = self._teacher_eval[split]
            t_conf, t_pred = cached["out"]["logits"].softmax(1).max(1)
            columns.update(teacher_pred=t_pred.numpy(), teacher_conf=t_conf.numpy())
            metrics.update({f"{split}/teacher_{k}": v for k, v in cached["scores"].items()})
            t_df, t_ds = cached["matrices"]
            old = np.ix_(self.old, self.old)
            metrics[f"{split}/student_df_corr"] = matrix_correlation(s_df[old], t_df[old])
            metrics[f"{split}/student_ds_corr"] = matrix_correlation(s_ds[old], t_ds[old])
            matrices.insert(0, t_df)
        artifacts = []
        if final:
            roles = (["teacher"] if teacher is not None else []) + ["student"]
            artifacts.append(Artifact(f"class_distances/{split}", np.stack(matrices), kind="class_distances",
                                      meta={"roles": roles, "classes": list(range(10)), "old": self.old,
                                            "new": self.new, "split": split}))
        return Evaluation(metrics, columns, artifacts)

    def run_meta(self, distiller) -> dict:
        return {"task": "incremental", "old": self.old, "new": self.new, "background": self.background,
                "layer": self.layer, "stage": self.data.meta.get("stage")}
