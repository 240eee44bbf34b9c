"""Box refinement: given images and one inaccurate box per object (with its class), decide a
pseudo box per object; judged by its IoU with the true box, which only the task knows.

Batches are scenes (shuffled by seed and epoch) with all their objects: the method's forward is
``(images (B, 1, S, S), noisy boxes (M, 4), labels (M,), owner (M,))`` with ``owner`` each
object's image index in the batch. The true boxes never reach the method.

Metrics per evaluated split: ``<split>/student_pseudo_iou`` (mean IoU of the pseudo boxes to the
true boxes, the primary metric), ``<split>/noisy_iou`` (the same for the given noisy boxes: what a
method that changes nothing scores), and the shares of boxes with IoU ≥ 0.5 and ≥ 0.75
(``..._hit50``, ``..._hit75``). Val and test scenes are held out: the method refines annotations
of images it never trained on. The last test pass also refines the training scenes' own noisy
boxes (what the pseudo boxes are for) and reports them as ``train/student_pseudo_iou`` and
``train/noisy_iou``. Proposal bags at evaluation come from a generator fixed by the run seed and
split, so every method sees the same bags at a seed.

Rows, one per object (``instance_id`` = object id, ``image_id`` = its scene): ``label``, the noisy,
pseudo and true boxes (``noisy_x0``.., ``pseudo_x0``.., ``true_x0``..), ``noisy_iou``,
``pseudo_iou`` and the method's per-object values (MIL weights, confidences, losses), in training
(each step's decisions) and at every evaluation. Artifacts: the image bank, and at the last test
pass ``bags/test`` (kind ``box_bags``): per test object its P scored proposals with their merge
weight and confidence, (M, P, 6) = (x0, y0, x1, y1, weight, confidence; NaN without SISD).
"""
from __future__ import annotations

import numpy as np
import torch

import kd_engine.methods  # noqa: F401  (registers every method)
from kd_engine.methods.box_refine_base import BOX_REFINE_METHODS
from kd_engine.parts.box_bags import paired_iou
from kd_engine.tasks.base import TASKS, Artifact, Batch, Evaluation, Task

SIDES = ("x0", "y0", "x1", "y1")
SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


def box_columns(prefix: str, boxes: torch.Tensor) -> dict[str, torch.Tensor]:
    return {f"{prefix}_{c}": boxes[:, i].detach().float().cpu() for i, c in enumerate(SIDES)}


def iou_metrics(prefix: str, iou: np.ndarray) -> dict[str, float]:
    return {prefix: float(iou.mean()), f"{prefix}_hit50": float((iou >= 0.5).mean()),
            f"{prefix}_hit75": float((iou >= 0.75).mean())}


@TASKS.register("box_refine")
class BoxRefineTask(Task):
    name = "box_refine"
    methods = BOX_REFINE_METHODS
    headline = ("pseudo_iou", "noisy_iou")

    def bind(self, distiller) -> None:
        self.distiller = distiller  # evaluation refines boxes through the method's own pass

    def objects(self, split: str, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of the objects of the scenes at ``positions`` and each one's index in that batch."""
        data = getattr(self.data, split)
        rows = data.objects_of(positions)
        owner = torch.repeat_interleave(torch.arange(len(positions)), data.y[positions])
        return rows, owner

    def batches(self, epoch: int, wants_ids: bool = False):
        train = self.data.train
        for positions, keep in self.epoch_positions(epoch):
            rows, owner = self.objects("train", positions)
            inputs = (train.x[positions], train.noisy_boxes[rows], train.obj_labels[rows], owner)
            yield Batch(inputs=tuple(t.to(self.device) for t in inputs), ids=train.ids[positions],
                        size=len(positions), keep=keep)

    def rows(self, split: str, objects: torch.Tensor, pseudo: torch.Tensor, extra: dict) -> dict[str, torch.Tensor]:
        data = getattr(self.data, split)
        pseudo = pseudo.detach().float().cpu()
        noisy, true = data.noisy_boxes[objects], data.true_boxes[objects]
        return {"instance_id": data.obj_ids[objects], "image_id": data.ids[data.obj_image[objects]],
                "label": data.obj_labels[objects], **box_columns("noisy", noisy), **box_columns("true", true),
                "noisy_iou": paired_iou(noisy, true), "pseudo_iou": paired_iou(pseudo, true),
                **{k: v.detach().float().cpu() for k, v in extra.items() if not k.startswith("pseudo_")},
                **box_columns("pseudo", pseudo)}

    def train_rows(self, out, batch: Batch, step: int, epoch: int) -> dict[str, torch.Tensor]:
        objects, _ = self.objects("train", torch.from_numpy(self.data.train.positions(batch.ids.tolist())))
        record = self.rows("train", objects, out.logits, out.per_sample)
        n = len(objects)
        return {**record, "step": torch.full((n,), step), "epoch": torch.full((n,), epoch)}

    def step_scalars(self, out) -> dict[str, torch.Tensor]:
        return {f"train/{k}_mean": v.float().mean() for k, v in out.per_sample.items()
                if k in ("weight_max", "confidence_topk")}

    @torch.no_grad()
    def refine(self, split: str):
        """Every object of ``split`` refined in eval mode: (object rows, decisions concatenated)."""
        data = getattr(self.data, split)
        generator = torch.Generator().manual_seed(int(self.cfg.seed) * 10 + SPLIT_CODE[split])
        was = self.distiller.training
        self.distiller.eval()
        found, parts = [], []
        size = self.cfg.data.eval_batch_size
        for start in range(0, len(data), size):
            positions = torch.arange(start, min(start + size, len(data)))
            rows, owner = self.objects(split, positions)
            with self.autocast():
                decided = self.distiller.refine(data.x[positions].to(self.device), data.noisy_boxes[rows].to(self.device),
                                                data.obj_labels[rows].to(self.device), owner.to(self.device), generator)
            found.append(rows)
            parts.append(decided)
        self.distiller.train(was)
        return torch.cat(found), parts

    def evaluate(self, split, student, teacher, final=False) -> Evaluation:
        objects, parts = self.refine(split)
        cat = lambda get: torch.cat([get(d).float().cpu() for d in parts])  # noqa: E731
        per_part = [d.columns() for d in parts]
        columns = {k: torch.cat([c[k].float().cpu() for c in per_part]) for k in per_part[0]}
        rows = self.rows(split, objects, cat(lambda d: d.pseudo), columns)
        metrics = {**iou_metrics(f"{split}/student_pseudo_iou", rows["pseudo_iou"].numpy()),
                   **iou_metrics(f"{split}/noisy_iou", rows["noisy_iou"].numpy())}
        artifacts = []
        if final:
            train_objects, train_parts = self.refine("train")
            true = self.data.train.true_boxes[train_objects]
            pseudo = torch.cat([d.pseudo.float().cpu() for d in train_parts])
            metrics.update(iou_metrics("train/student_pseudo_iou", paired_iou(pseudo, true).numpy()))
            metrics.update(iou_metrics("train/noisy_iou", paired_iou(self.data.train.noisy_boxes[train_objects],
                                                                      true).numpy()))
            weights = cat(lambda d: d.weights)
            confidence = cat(lambda d: d.confidence) if parts[0].confidence is not None \
                else torch.full_like(weights, float("nan"))
            bags = torch.cat([cat(lambda d: d.bag), weights[..., None], confidence[..., None]], -1)
            artifacts.append(Artifact(f"bags/{split}", bags.numpy(), kind="box_bags", role="student", meta={
                "split": split, "object_ids": rows["instance_id"].tolist(), "image_ids": rows["image_id"].tolist(),
                "layout": "(object, proposal, [x0, y0, x1, y1, weight, confidence])"}))
        return Evaluation(metrics, {k: v.numpy() for k, v in rows.items()}, artifacts)

    def save_inputs(self, writer) -> None:
        ids = np.concatenate([s.ids.numpy() for s in (self.data.train, self.data.val, self.data.test)])
        writer.save_images(ids, self.data.images(ids))

    def run_meta(self, distiller) -> dict:
        meta = self.data.meta
        return {"task": "box_refine", "rho": meta.get("rho"), "image_size": meta.get("image_size"),
                **(distiller.describe() if hasattr(distiller, "describe") else {})}
