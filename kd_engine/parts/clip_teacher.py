"""The small CLIP stand-in: a two-tower model (`kd_engine.models.two_tower.TwoTower`) trained once
with symmetric InfoNCE on the digit–caption pairs (`kd_engine.data.captions`) and cached. No
weights are downloaded. It is the teacher of image–text distillation runs and the frozen
text-aligned image encoder other methods can read (open-vocabulary segmentation).

API (everything frozen, in eval mode):

    teacher, path = cached_clip_teacher(cache_dir)         # trains on first use (~30 s), then loads
    teacher.encode_image(images)    # (B, 1, S, S) in [0, 1] → (B, embed_dim), L2-normalised
    teacher.encode_text(tokens)     # (B, 4) caption token ids → (B, embed_dim), L2-normalised
    class_prompt_embeddings(teacher)  # (10, embed_dim): the prompts [digit, normal, centre, rot0]

The teacher trains on the training split of the caption data at ``split_seed`` (default 0; give
student runs the same ``data.split_seed`` so no teacher-seen image is tested). The file is
``<cache_dir>/clip_teacher/<hash>.safetensors``, the hash of the data params, split seed and
training settings, so changing any of them trains a new one.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from kd_engine.config import stable_hash
from kd_engine.data.captions import PARAMS as CAPTION_PARAMS, VOCAB, CAPTION_LENGTH, caption_bundle, class_prompts
from kd_engine.losses.image_text import clip_infonce
from kd_engine.models.two_tower import TwoTower
from kd_engine.params import read_params
from kd_engine.trainers.checkpoint import load_weights, save_weights

# The teacher's towers (wider and deeper than the students') and its InfoNCE training.
ARCH = {"embed_dim": 32, "patch": 4, "image_dim": 64, "image_depth": 4, "image_heads": 4,
        "text_dim": 64, "text_depth": 2, "text_heads": 4, "mlp_ratio": 2.0}
TRAINING = {"epochs": 30, "lr": 2e-3, "weight_decay": 0.05, "batch": 128, "scale": 20.0, "seed": 0}
CACHE_VERSION = 1


def build_two_tower(input_shape, arch: Mapping[str, Any], scale: float) -> TwoTower:
    return TwoTower(input_shape, 10, vocab=len(VOCAB), length=CAPTION_LENGTH, logit_scale=scale, **dict(arch))


def train_clip(model: TwoTower, images: torch.Tensor, tokens: torch.Tensor, epochs: int, lr: float,
               weight_decay: float, batch: int, scale: float, seed: int) -> list[float]:
    """AdamW (warm-up, cosine lr) on `clip_infonce` over shuffled pairs; the global torch RNG is saved and
    restored. Returns the mean loss per epoch."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    steps = epochs * max(1, -(-len(images) // batch))
    warm = max(1, steps // 10)  # linear warm-up over a tenth of the steps, then cosine decay
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: min(1.0, (k + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, k / steps))))
    losses = []
    model.train()
    for _ in range(epochs):
        order, total = torch.randperm(len(images)), 0.0
        for start in range(0, len(images), batch):
            idx = order[start:start + batch]
            loss = clip_infonce(model.encode_image(images[idx]), model.encode_text(tokens[idx]), scale)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        losses.append(total / len(images))
    torch.set_rng_state(state)
    return losses


def teacher_identity(data_params: Mapping[str, Any] | None = None, split_seed: int = 0,
                     val_fraction: float = 0.15, test_fraction: float = 0.2, **settings) -> dict:
    """Everything that defines a cached teacher (checked data params, split, arch, training)."""
    data = read_params(dict(data_params or {}), CAPTION_PARAMS, "data.params", "dataset digit_captions")
    unknown = set(settings) - set(ARCH) - set(TRAINING)
    if unknown:
        raise ValueError(f"clip teacher: unknown settings {sorted(unknown)} (allowed: {sorted({**ARCH, **TRAINING})})")
    return {"data": data, "split_seed": int(split_seed), "val_fraction": float(val_fraction),
            "test_fraction": float(test_fraction), "arch": {k: settings.get(k, v) for k, v in ARCH.items()},
            "training": {k: settings.get(k, v) for k, v in TRAINING.items()}, "version": CACHE_VERSION}


def cached_clip_teacher(cache_dir: str | Path, data_params: Mapping[str, Any] | None = None, split_seed: int = 0,
                        val_fraction: float = 0.15, test_fraction: float = 0.2,
                        **settings) -> tuple[TwoTower, str]:
    """The frozen teacher of these data and settings: loaded from the cache when present, else
    trained on the training pairs and saved. Returns the model and its file (whose metadata holds
    the identity and the per-epoch InfoNCE, `teacher_losses`)."""
    ident = teacher_identity(data_params, split_seed, val_fraction, test_fraction, **settings)
    path = Path(cache_dir) / "clip_teacher" / f"{stable_hash(ident)}.safetensors"
    data = caption_bundle(ident["data"], ident["val_fraction"], ident["test_fraction"], ident["split_seed"])
    scale = float(ident["training"]["scale"])
    model = build_two_tower(data.input_shape, ident["arch"], scale)
    if path.is_file():
        load_weights(model, path, field="clip teacher cache")
    else:
        train = data.train
        losses = train_clip(model, train.x, train.tokens, **ident["training"])
        path.parent.mkdir(parents=True, exist_ok=True)
        save_weights(model, path, {"identity": ident, "losses": losses})
    return model.eval().requires_grad_(False), str(path)


def teacher_losses(path: str | Path) -> list[float]:
    """The per-epoch training InfoNCE stored with a cached teacher."""
    from kd_engine.trainers.checkpoint import read_metadata

    return list(read_metadata(Path(path)).get("losses", []))


@torch.no_grad()
def class_prompt_embeddings(model: nn.Module, classes: int = 10) -> torch.Tensor:
    """(classes, embed_dim) normalised text embeddings of the zero-shot prompts."""
    device = next(model.parameters()).device
    return model.encode_text(class_prompts(classes).to(device))


def zero_shot_logits(model: nn.Module, images: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
    """(B, classes) cosines of each image's embedding with the class-prompt embeddings."""
    prompts = class_prompt_embeddings(model) if prompts is None else prompts
    return model.encode_image(images) @ prompts.T


__all__ = ["ARCH", "TRAINING", "cached_clip_teacher", "class_prompt_embeddings", "teacher_losses",
           "zero_shot_logits", "build_two_tower", "train_clip"]
