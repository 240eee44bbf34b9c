"""A tiny stand-in for a 2-D vision–language model (UP-VL's teacher; a reconstruction): a
fully convolutional CNN that gives a dense D-dimensional feature per pixel, and one learned
"class-name embedding" t_c per class, living in the same space, plus one for "nothing"
(background). No weights are downloaded: it is trained here, once, and cached.

Training is contrastive between pixels and class-name embeddings (InfoNCE with the embeddings as
the keys): for a pixel feature F(u, v) of class c (0 = background),

    ℓ(u, v) = −log softmax_j( cos(F(u, v), e_j) / τ )[c],   e = [background; t_1 … t_K]

averaged separately over object and background pixels and then over the two halves (single-object
renders are mostly background; without the balance the network learns "background" everywhere).
After training, cos(F(u, v), t_c) is the pixel's "text similarity" to class c: the quantity a
dense CLIP-like model gives and the 3-D student is distilled from. All classes are taught here,
including one that the 3-D side never labels: that class reaches the student only through this
embedding space (the open-vocabulary check).

``cached_vl_teacher`` stores the weights under ``<cache_dir>/vl_teacher/<hash>.safetensors``
(hash of the caller's data identity and the settings) and ``cached_feature_maps`` the teacher's
maps of a set of scene images under ``<cache_dir>/vl_features/<hash>.npy`` (float16).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kd_engine.config import stable_hash
from kd_engine.trainers.checkpoint import load_weights, save_weights

VL_DEFAULTS = {"width": 16, "dim": 16, "epochs": 12, "lr": 3e-3, "batch": 64, "tau": 0.1, "seed": 0}
CACHE_VERSION = 1


class DenseVLNet(nn.Module):
    """conv3×3 → conv3×3 (dilation 2) → conv3×3 (dilation 4), ReLU between, → 1×1 conv to D:
    a 15-pixel receptive field at full resolution, enough to see texture, not whole scenes."""

    def __init__(self, in_channels: int = 3, classes: int = 5, width: int = 16, dim: int = 16, tau: float = 0.1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=4, dilation=4), nn.ReLU(),
            nn.Conv2d(width, dim, 1))
        generator = torch.Generator().manual_seed(0)
        self.class_embeddings = nn.Parameter(torch.randn(classes, dim, generator=generator))
        self.background = nn.Parameter(torch.randn(1, dim, generator=generator))
        self.tau = float(tau)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, D, H, W) dense features."""
        return self.body(images)

    def pixel_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) -> (B, 1 + K, H, W): cos to [background; classes] / τ."""
        keys = F.normalize(torch.cat([self.background, self.class_embeddings]), dim=1)
        return torch.einsum("bdhw,kd->bkhw", F.normalize(features, dim=1), keys) / self.tau


def balanced_pixel_nce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per image: ½·(mean over object pixels + mean over background pixels) of the pixel InfoNCE
    (cross-entropy of ``logits`` (B, 1 + K, H, W) against ``labels`` (B, H, W), 0 = background);
    an image without one of the two kinds of pixel uses the other alone."""
    ce = F.cross_entropy(logits, labels, reduction="none").flatten(1)
    fg = (labels.flatten(1) > 0).float()
    halves = []
    for weight in (fg, 1.0 - fg):
        count = weight.sum(1)
        halves.append(((ce * weight).sum(1) / count.clamp_min(1.0), count > 0))
    (fg_loss, has_fg), (bg_loss, has_bg) = halves
    both = has_fg & has_bg
    return torch.where(both, 0.5 * (fg_loss + bg_loss), torch.where(has_fg, fg_loss, bg_loss))


def train_vl_teacher(images: torch.Tensor, labels: torch.Tensor, classes: int, width: int = 16, dim: int = 16,
                     epochs: int = 12, lr: float = 3e-3, batch: int = 64, tau: float = 0.1,
                     seed: int = 0) -> tuple[DenseVLNet, list[float]]:
    """Adam on `balanced_pixel_nce` over (N, C, H, W) images with (N, H, W) pixel classes; the
    global torch RNG is saved and restored. Returns the frozen network and the loss per epoch."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    model = DenseVLNet(images.shape[1], classes, width, dim, tau)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        order, total = torch.randperm(len(images)), 0.0
        for start in range(0, len(images), batch):
            idx = order[start:start + batch]
            loss = balanced_pixel_nce(model.pixel_logits(model(images[idx])), labels[idx]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        losses.append(total / len(images))
    torch.set_rng_state(state)
    return model.eval().requires_grad_(False), losses


def cached_vl_teacher(make_data: Callable[[], tuple[torch.Tensor, torch.Tensor]], classes: int,
                      identity: Mapping[str, Any], cache_dir: str | Path, in_channels: int = 3,
                      **settings) -> tuple[DenseVLNet, str, list[float]]:
    """The teacher for the data described by ``identity`` and these settings: loaded from the
    cache when present, else trained on ``make_data()`` (images, pixel targets; called only then)
    and saved. Returns the network, its file and the training loss per epoch."""
    settings = {**VL_DEFAULTS, **settings}
    key = stable_hash({"data": dict(identity), "classes": classes, "settings": settings, "version": CACHE_VERSION})
    path = Path(cache_dir) / "vl_teacher" / f"{key}.safetensors"
    if path.is_file():
        model = DenseVLNet(in_channels, classes, settings["width"], settings["dim"], settings["tau"])
        meta = load_weights(model, path, field="vl teacher cache")
        return model.eval().requires_grad_(False), str(path), list(meta.get("losses", []))
    images, labels = make_data()
    model, losses = train_vl_teacher(images, labels, classes, **settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model, path, {"settings": settings, "identity": dict(identity), "losses": losses})
    return model, str(path), losses


@torch.no_grad()
def cached_feature_maps(model: DenseVLNet, images: torch.Tensor, teacher_path: str, identity: Mapping[str, Any],
                        cache_dir: str | Path, batch: int = 256) -> torch.Tensor:
    """(N, D, H, W) teacher maps of ``images`` (described by ``identity``), computed once per
    teacher and stored as float16 under ``<cache_dir>/vl_features/``."""
    key = stable_hash({"teacher": Path(teacher_path).stem, "data": dict(identity), "version": CACHE_VERSION})
    path = Path(cache_dir) / "vl_features" / f"{key}.npy"
    if path.is_file():
        maps = np.load(path, allow_pickle=False)
        if maps.shape[0] == len(images):
            return torch.from_numpy(maps.astype(np.float32))
    maps = torch.cat([model(images[i:i + batch]) for i in range(0, len(images), batch)]) if len(images) else \
        torch.zeros(0, model.class_embeddings.shape[1], *images.shape[2:])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # this process's own: arms run side by side
    stored = maps.numpy().astype(np.float16)
    with open(tmp, "wb") as handle:
        np.save(handle, stored)
    tmp.replace(path)
    return torch.from_numpy(stored.astype(np.float32))  # the stored precision, first time or not
