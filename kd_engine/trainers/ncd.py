"""The novel-class-discovery loop (Cr-KD / UNO, card §10): the classification loop plus

- **stage 1** before the first epoch: the student is trained supervised on the *known* classes
  of the training split only (CE on the known head's cosine logits / τ, one augmented view, SGD
  with the run's lr/momentum/weight decay, cosine over ``stage1_epochs``); the distiller then
  freezes a copy as its teacher. Novel labels are never read;
- **NCD metrics** at every evaluation, with `kd_engine.metrics_extra.hungarian_accuracy`:
  ``novel_acc`` (task-aware: the best novel head's clusters on novel-class samples, Hungarian),
  ``known_acc`` (task-aware: the known head on known-class samples, plain accuracy) and
  ``all_acc`` (task-agnostic: argmax over [known, novel], Hungarian over all classes).
  ``student_acc`` is set to ``all_acc`` (raw argmax indices of novel clusters are arbitrary).
  The card's headline metric, ``train/novel_acc`` (clustering accuracy on the novel training
  samples, clean images, eval mode), is logged each epoch and in the final metrics;
- the distiller's ``step_stats`` added to the step scalars;
- after stage 1, the artifact ``relation_matrix`` (novel × known): the frozen teacher's mean
  known-class distribution softmax(z_known / (τT)) over the training samples of each novel class
  (labels used for this diagnostic only).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from kd_engine.data.augment import jitter
from kd_engine.errors import ConfigError
from kd_engine.metrics_extra import hungarian_accuracy
from kd_engine.trainers.evaluate import batches
from kd_engine.trainers.loop import _Loop


@torch.no_grad()
def ncd_predictions(model, dataset, device, batch_size: int, autocast) -> dict[str, np.ndarray]:
    """Eval-mode known-head argmax, best-novel-head argmax, task-agnostic argmax, labels."""
    was_training = model.training
    model.eval()
    known, novel, joint, labels = [], [], [], []
    best = model.best_head()
    for x, y, _ in batches(dataset, batch_size):
        with autocast():
            k, n = model.heads(x.to(device))
        k, n = k.float().cpu(), n[best].float().cpu()
        known.append(k.argmax(1))
        novel.append(n.argmax(1) + k.shape[1])
        joint.append(torch.cat([k, n], 1).argmax(1))
        labels.append(y)
    model.train(was_training)
    return {name: torch.cat(v).numpy() for name, v in
            (("known", known), ("novel", novel), ("joint", joint), ("label", labels))}


def ncd_metrics(pred: dict[str, np.ndarray], known: int) -> dict[str, float]:
    y = pred["label"]
    out = {"all_acc": hungarian_accuracy(y, pred["joint"]) if len(y) else float("nan")}
    is_novel = y >= known
    if is_novel.any():
        out["novel_acc"] = hungarian_accuracy(y[is_novel], pred["novel"][is_novel])
    if (~is_novel).any():
        out["known_acc"] = float((pred["known"][~is_novel] == y[~is_novel]).mean())
    return out


class NCDLoop(_Loop):
    def __init__(self, cfg, ctx, device, data, distiller, *args):
        if ctx.enabled:
            raise ConfigError(f"method: {cfg.method} runs in one process here; run it without torchrun")
        known = data.meta.get("known")
        if known is None:
            raise ConfigError(f"data.name: method {cfg.method} needs a dataset with known and novel classes "
                              f"(e.g. digits_ncd), got {cfg.data.name!r}")
        if known != distiller.known:
            raise ConfigError(f"student.params.known: {distiller.known} known classes, but the data has "
                              f"{known} (data.params.known_classes)")
        super().__init__(cfg, ctx, device, data, distiller, *args)

    def _batch_metrics(self, split: str) -> dict[str, float]:
        pred = ncd_predictions(self.student, getattr(self.data, split), self.device,
                               self.cfg.data.eval_batch_size, self.autocast)
        return {f"{split}/{k}": v for k, v in ncd_metrics(pred, self.distiller.known).items()}

    def _evaluate(self, split: str, epoch: int, record: bool = True) -> dict[str, float]:
        metrics = super()._evaluate(split, epoch, record)
        metrics.update(self._batch_metrics(split))
        metrics[f"{split}/student_acc"] = metrics[f"{split}/all_acc"]
        if split == "test":
            metrics.update(self._batch_metrics("train"))
        return metrics

    def _train_epoch(self, epoch: int) -> None:
        if not bool(self.distiller.stage1_done):
            self._stage1()
        super()._train_epoch(epoch)

    def _end_of_epoch(self, epoch: int) -> None:
        self.writer.log_scalars(self.global_step, epoch, self._batch_metrics("train"))
        super()._end_of_epoch(epoch)

    def _step_scalars(self, out, loss):
        values = super()._step_scalars(out, loss)
        values.update({key: value.detach().float() for key, value in self.distiller.step_stats.items()})
        return values

    def _stage1(self) -> None:
        """Supervised training on the known classes of the training split, then freeze a teacher."""
        student, cfg, known = self.student, self.cfg, self.distiller.known
        train = self.data.train
        keep = train.y < known
        x_all, y_all = train.x[keep], train.y[keep]
        epochs = self.distiller.stage1_epochs
        optimizer = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=cfg.optimizer.lr,
                                    momentum=cfg.optimizer.momentum, weight_decay=cfg.optimizer.weight_decay)
        steps_per_epoch = max(1, math.ceil(len(y_all) / cfg.data.batch_size))
        total, step, correct, seen, loss_sum = epochs * steps_per_epoch, 0, 0, 0, 0.0
        generator = torch.Generator().manual_seed(cfg.seed * 7919 + 1)
        student.train()
        for epoch in range(epochs):
            order = torch.randperm(len(y_all), generator=generator)
            correct, seen, loss_sum = 0, 0, 0.0
            for idx in torch.tensor_split(order, steps_per_epoch):
                x, y = x_all[idx].to(self.device), y_all[idx].to(self.device)
                for group in optimizer.param_groups:
                    group["lr"] = cfg.optimizer.lr * 0.5 * (1 + math.cos(math.pi * step / total))
                with self.autocast():
                    logits = student.heads(jitter(x))[0].float() / self.distiller.tau
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                student.normalize_prototypes()
                step += 1
                correct += int((logits.argmax(1) == y).sum())
                seen, loss_sum = seen + len(y), loss_sum + loss.item() * len(y)
        self.distiller.finish_stage1()
        if self.writer is not None:
            self._save_relation_matrix()
            self.writer.log_scalars(0, 0, {"stage1/train_loss": loss_sum / max(seen, 1),
                                           "stage1/train_known_acc": correct / max(seen, 1),
                                           "stage1/epochs": float(epochs)})
            self.writer.event(f"stage 1: {epochs} supervised epochs on {len(y_all)} known-class samples")

    @torch.no_grad()
    def _save_relation_matrix(self) -> None:
        teacher, known, d = self.distiller.frozen, self.distiller.known, self.distiller
        train = self.data.train
        rows = []
        for c in range(known, self.data.num_classes):
            x = train.x[train.y == c].to(self.device)
            if not len(x):
                rows.append(torch.full((known,), float("nan")))
                continue
            rows.append(F.softmax(teacher.heads(x)[0].float() / (d.tau * d.T), 1).mean(0).cpu())
        names = self.data.class_names
        self.writer.save_artifact("relation_matrix", torch.stack(rows).numpy(), kind="relation", dtype="float32",
                                  meta={"rows": names[known:], "columns": names[:known]})
