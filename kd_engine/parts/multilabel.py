"""Multi-label teachers: a model trained with summed BCE on multi-hot targets (Adam, shuffled
mini-batches), cached on disk by the hash of what defines it (model, images, settings, seed)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from kd_engine.config import stable_hash
from kd_engine.losses.multilabel import bce_sum
from kd_engine.models import build_model
from kd_engine.trainers.checkpoint import load_weights, save_weights


def train_multilabel(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, epochs: int,
                     lr: float, batch_size: int, seed: int) -> list[float]:
    """Train in place; the caller's global torch RNG state is restored afterwards."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(epochs):
        total = 0.0
        for batch in torch.randperm(len(x)).split(batch_size):
            loss = bce_sum(model(x[batch]), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        losses.append(total / len(x))
    optimizer.zero_grad(set_to_none=True)
    torch.set_rng_state(state)
    return losses


def cached_multilabel_teacher(name: str, params: dict, input_shape, num_classes: int, x: torch.Tensor,
                              ids: torch.Tensor, targets: torch.Tensor, seed: int, cache_dir: str | Path,
                              epochs: int, lr: float, batch_size: int) -> tuple[torch.nn.Module, str]:
    spec = SimpleNamespace(name=name, params=dict(params))
    model = build_model(spec, input_shape, num_classes, field="distill.params.teacher")
    key = stable_hash({"model": name, "params": params, "ids": ids.tolist(), "seed": seed, "epochs": epochs,
                       "lr": lr, "batch_size": batch_size, "targets": stable_hash(targets.tolist()), "version": 1})
    path = Path(cache_dir) / "multilabel_teachers" / f"{key}.safetensors"
    if path.is_file():
        load_weights(model, path, field="multi-label teacher cache")
        return model.eval(), str(path)
    losses = train_multilabel(model, x, targets, epochs, lr, batch_size, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model, path, {"model": name, "params": params, "seed": seed, "losses": losses})
    return model.eval(), str(path)
