"""Evaluation and the per-epoch probes of how teacher and student representations differ."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kd_engine.metrics import accuracy, linear_cka
from kd_engine.models import feature_taps


@dataclass
class Predictions:
    logits: torch.Tensor  # float32, CPU
    labels: torch.Tensor
    ids: torch.Tensor

    def per_sample(self, prefix: str) -> dict[str, np.ndarray]:
        probs = self.logits.softmax(dim=1)
        conf, pred = probs.max(dim=1)
        loss = F.cross_entropy(self.logits, self.labels, reduction="none")
        return {f"{prefix}_loss": loss.numpy(), f"{prefix}_pred": pred.numpy(),
                f"{prefix}_conf": conf.numpy()}

    def summary(self) -> dict[str, float]:
        loss = F.cross_entropy(self.logits, self.labels).item()
        return {"acc": accuracy(self.labels.numpy(), self.logits.argmax(1).numpy()), "loss": loss}


def batches(dataset, batch_size: int):
    """Yield (x, y, ids) in order; in-memory datasets are sliced directly."""
    n = len(dataset)
    for start in range(0, n, batch_size):
        if hasattr(dataset, "x"):
            yield (dataset.x[start:start + batch_size], dataset.y[start:start + batch_size],
                   dataset.ids[start:start + batch_size])
        else:
            items = [dataset[i] for i in range(start, min(n, start + batch_size))]
            yield tuple(torch.stack([item[k] for item in items]) for k in range(3))


@torch.no_grad()
def predict(model: nn.Module, dataset, device: torch.device, batch_size: int, autocast) -> Predictions:
    was_training = model.training
    model.eval()
    logits, labels, ids = [], [], []
    for x, y, i in batches(dataset, batch_size):
        with autocast():
            logits.append(model(x.to(device)).float().cpu())
        labels.append(y)
        ids.append(i)
    model.train(was_training)
    return Predictions(torch.cat(logits), torch.cat(labels), torch.cat(ids))


def spatial_attention(feature: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W): channel mean of squared activations, scaled to max 1 per map."""
    attention = feature.float().pow(2).mean(dim=1)
    return attention / attention.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)


@torch.no_grad()
def layer_outputs(model: nn.Module, x: torch.Tensor, layers: list[str], autocast) -> dict[str, torch.Tensor]:
    was_training = model.training
    model.eval()
    with autocast(), feature_taps(model, layers) as feats:
        model(x)
    model.train(was_training)
    return {name: value.float().cpu() for name, value in feats.items()}


def disparity_rows(student_feats: dict, teacher_feats: dict, pairs) -> list[tuple[str, str, str, float]]:
    """Per layer pair: 1 - linear CKA (width-agnostic) and, for maps, the MSE between the
    L2-normalised spatial attention maps resized to the smaller grid."""
    rows = []
    for pair in pairs:
        s, t = student_feats[pair.student], teacher_feats[pair.teacher]
        cka = linear_cka(s.flatten(1).double(), t.flatten(1).double())
        rows.append((pair.student, pair.teacher, "cka", cka))
        rows.append((pair.student, pair.teacher, "disparity", 1.0 - cka))
        if s.dim() == 4 and t.dim() == 4:
            size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
            a_s = F.normalize(F.adaptive_avg_pool2d(s.pow(2).mean(1, keepdim=True), size).flatten(1), dim=1)
            a_t = F.normalize(F.adaptive_avg_pool2d(t.pow(2).mean(1, keepdim=True), size).flatten(1), dim=1)
            rows.append((pair.student, pair.teacher, "attention_mse", (a_s - a_t).pow(2).sum(1).mean().item()))
    return rows
