"""What novel-class discovery adds around Cr-KD's step (paper 10): stage 1 as a trainer phase,
and the NCD metrics.

- **Stage 1** (`stage1_phase`), before the first epoch: the student is trained supervised on the
  *known* classes of the training split only (CE on the known head's cosine logits / τ, one
  augmented view, SGD with the run's lr/momentum/weight decay, cosine over ``stage1_epochs``);
  the distiller then freezes a copy as its teacher. Novel labels are never read. The trainer
  steps it (its non-finite guard and grad_clip apply). After it, the artifact
  ``relation_matrix`` (novel × known): the frozen teacher's mean known-class distribution
  softmax(z_known / (τT)) over the training samples of each novel class (labels used for this
  diagnostic only).
- **NCD metrics** (`ncd_predictions`, `ncd_metrics`) with `hungarian_accuracy`: ``novel_acc``
  (task-aware: the best novel head's clusters on novel-class samples, Hungarian), ``known_acc``
  (task-aware: the known head on known-class samples, plain accuracy) and ``all_acc``
  (task-agnostic: argmax over [known, novel], Hungarian over all classes).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from kd_engine.data.augment import jitter
from kd_engine.data.loader import require_in_memory
from kd_engine.methods.base import Phase, PhaseReport, StepOutput
from kd_engine.metrics_extra import hungarian_accuracy


@torch.no_grad()
def ncd_predictions(model, batches, device, autocast) -> dict[str, np.ndarray]:
    """Eval-mode known-head argmax, best-novel-head argmax, task-agnostic argmax, labels, over
    (x, y, ids) ``batches``."""
    was_training = model.training
    model.eval()
    known, novel, joint, labels = [], [], [], []
    best = model.best_head()
    for x, y, _ in batches:
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


def stage1_phase(distiller, task) -> Phase:
    """Stage 1 of ``distiller`` (a CrKD) on ``task``'s training split, as a trainer `Phase`."""
    student, cfg, known = distiller.student, task.cfg, distiller.known
    train = task.data.train
    require_in_memory(train, "method 'crkd' (stage 1)")
    keep = train.y < known
    x_all, y_all = train.x[keep], train.y[keep]
    epochs = distiller.stage1_epochs
    parameters = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=cfg.optimizer.lr, momentum=cfg.optimizer.momentum,
                                weight_decay=cfg.optimizer.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(y_all) / cfg.data.batch_size))
    total = epochs * steps_per_epoch
    tally = {"correct": 0, "seen": 0, "loss": 0.0}

    def batches():
        generator = torch.Generator().manual_seed(cfg.seed * 7919 + 1)
        student.train()
        for _ in range(epochs):
            order = torch.randperm(len(y_all), generator=generator)
            tally.update(correct=0, seen=0, loss=0.0)  # the report is the last stage-1 epoch's
            for idx in torch.tensor_split(order, steps_per_epoch):
                yield x_all[idx].to(task.device), y_all[idx].to(task.device)

    def step(batch) -> StepOutput:
        x, y = batch
        logits = student.heads(jitter(x))[0].float() / distiller.tau
        loss = F.cross_entropy(logits, y)
        tally["correct"] += int((logits.argmax(1) == y).sum())
        tally["seen"] += len(y)
        tally["loss"] += loss.item() * len(y)
        return StepOutput(logits, {"stage1": loss})

    def finish() -> PhaseReport:
        distiller.finish_stage1()
        seen = max(tally["seen"], 1)
        return PhaseReport(
            scalars={"stage1/train_loss": tally["loss"] / seen, "stage1/train_known_acc": tally["correct"] / seen,
                     "stage1/epochs": float(epochs)},
            artifacts=[relation_matrix(distiller, task)],
            event=f"stage 1: {epochs} supervised epochs on {len(y_all)} known-class samples")

    return Phase("stage 1", optimizer, parameters, batches, step, finish,
                 lr=lambda i: cfg.optimizer.lr * 0.5 * (1 + math.cos(math.pi * i / total)),
                 after_step=student.normalize_prototypes)


@torch.no_grad()
def relation_matrix(distiller, task) -> dict:
    """The ``relation_matrix`` artifact (keyword arguments of `RunWriter.save_artifact`)."""
    teacher, known = distiller.frozen, distiller.known
    train, data = task.data.train, task.data
    require_in_memory(train, "method 'crkd' (relation matrix)")
    rows = []
    for c in range(known, data.num_classes):
        x = train.x[train.y == c].to(task.device)
        if not len(x):
            rows.append(torch.full((known,), float("nan")))
            continue
        rows.append(F.softmax(teacher.heads(x)[0].float() / (distiller.tau * distiller.T), 1).mean(0).cpu())
    names = data.class_names
    return {"name": "relation_matrix", "array": torch.stack(rows).numpy(), "kind": "relation",
            "dtype": "float32", "meta": {"rows": names[known:], "columns": names[:known]}}
