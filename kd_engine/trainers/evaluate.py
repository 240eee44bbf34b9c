"""Evaluation and the per-epoch probes of how teacher and student representations differ."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kd_engine.data.loader import Loaders
from kd_engine.metrics import accuracy, cka_from_grams, gram
from kd_engine.models import feature_taps

log = logging.getLogger("kdw")


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


def batches(dataset, batch_size: int, loaders: Loaders | None = None):
    """Yield (x, y, ids) in order: sliced from an in-memory split, else read through the eval
    transform (``eval_item``, no augmentation) by ``loaders``' DataLoader (one process by default)."""
    yield from (loaders or Loaders()).eval(dataset, batch_size)


@torch.no_grad()
def predict(model: nn.Module, dataset, device: torch.device, batch_size: int, autocast,
            loaders: Loaders | None = None) -> Predictions:
    was_training = model.training
    model.eval()
    logits, labels, ids = [], [], []
    for x, y, i in batches(dataset, batch_size, loaders):
        with autocast():
            logits.append(model(x.to(device, non_blocking=True)).float().cpu())
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


def disparity_rows(student_feats: dict, teacher_feats: dict, pairs,
                   deadline: float | None = None) -> list[tuple[str, str, str, float]]:
    """Per layer pair: 1 - linear CKA (width-agnostic) and, for maps, the MSE between the
    L2-normalised spatial attention maps resized to the smaller grid.

    CKA is taken in sample space from (n, n) Gram matrices, each layer's computed once even when it
    appears in several pairs, so memory is O(n²) whatever the layer's C·H·W. Past ``deadline``
    (a ``time.perf_counter()`` value) the remaining pairs are left out: the rows so far are kept."""
    rows, grams = [], {}

    def gram_of(role: str, name: str, value: torch.Tensor) -> torch.Tensor:
        if (role, name) not in grams:
            grams[role, name] = gram(value)
        return grams[role, name]

    for pair in pairs:
        if deadline is not None and time.perf_counter() > deadline:
            break
        s, t = student_feats[pair.student], teacher_feats[pair.teacher]
        cka = cka_from_grams(gram_of("s", pair.student, s), gram_of("t", pair.teacher, t))
        rows.append((pair.student, pair.teacher, "cka", cka))
        rows.append((pair.student, pair.teacher, "disparity", 1.0 - cka))
        if s.dim() == 4 and t.dim() == 4:
            size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
            a_s = F.normalize(F.adaptive_avg_pool2d(s.pow(2).mean(1, keepdim=True), size).flatten(1), dim=1)
            a_t = F.normalize(F.adaptive_avg_pool2d(t.pow(2).mean(1, keepdim=True), size).flatten(1), dim=1)
            rows.append((pair.student, pair.teacher, "attention_mse", (a_s - a_t).pow(2).sum(1).mean().item()))
    return rows


def probe_inputs(dataset, count: int, loaders: Loaders | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed probe subset: the first ``count`` items of ``dataset`` as (x, ids), sliced from
    an in-memory dataset or read without augmentation (``eval_item``) through a DataLoader from a
    lazy one, so every epoch probes the same images."""
    parts = list((loaders or Loaders()).eval(dataset, max(1, count), count=count))
    if not parts:
        return torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    return torch.cat([p[0] for p in parts]), torch.cat([p[2] for p in parts])


def bytes_per_probe_sample(model: nn.Module, layers: list[str], x: torch.Tensor, autocast) -> int:
    """float32 bytes one probe sample's tapped features take (measured on one sample)."""
    feats = layer_outputs(model, x[:1], layers, autocast)
    return sum(v[0].numel() * 4 for v in feats.values())


@dataclass
class RecorderGuard:
    """A time and memory budget for the optional per-epoch recorders (feature disparity and
    attention maps), so that recording never ends a run.

    ``run`` calls a recorder; if it raises, or takes longer than ``seconds``, one warning is logged
    (once per recorder and kind), what it wrote before stays recorded, and training goes on.
    A recorder that raised is skipped from then on; a slow one keeps running, but it is handed a
    deadline it should stop at. ``megabytes`` caps the memory a recorder may plan for (see
    ``fit_count``). Exceptions in ``passthrough`` (e.g. a stop request) are re-raised."""

    seconds: float
    megabytes: float
    passthrough: tuple = ()
    event: object = None  # optional callable(message, level) that also records the warning in the run
    failed: set = field(default_factory=set)
    warned: set = field(default_factory=set)

    def deadline(self) -> float:
        return time.perf_counter() + self.seconds

    def warn(self, name: str, kind: str, message: str) -> None:
        if (name, kind) in self.warned:
            return
        self.warned.add((name, kind))
        log.warning("recorder %s: %s; training goes on", name, message)
        if self.event is not None:
            self.event(f"recorder {name}: {message}", "warning")

    def fit_count(self, name: str, wanted: int, bytes_per_sample: int) -> int:
        """Largest probe size <= ``wanted`` whose features fit the memory budget (warns if cut)."""
        fits = int(self.megabytes * 2**20 // max(bytes_per_sample, 1))
        if fits < wanted:
            self.warn(name, "memory", f"probe cut from {wanted} to {fits} samples to stay within "
                      f"{self.megabytes:g} MB ({bytes_per_sample / 2**20:.2f} MB of features a sample)")
        return min(wanted, fits)

    def run(self, name: str, fn, *args, **kwargs) -> None:
        if name in self.failed:
            return
        started = time.perf_counter()
        try:
            fn(*args, **kwargs)
        except self.passthrough:
            raise
        except Exception as exc:  # noqa: BLE001 - a recorder must never end the run
            self.failed.add(name)
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.warn(name, "error", f"failed ({type(exc).__name__}: {first[:300]}); "
                      "what it recorded so far is kept and it is off for the rest of the run")
            return
        elapsed = time.perf_counter() - started
        if elapsed > self.seconds:
            self.warn(name, "time", f"took {elapsed:.1f} s, over its {self.seconds:g} s budget; "
                      "it now stops at the budget and records only what it reached")
