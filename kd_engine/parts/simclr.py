"""A small SimCLR trainer (WAD's teacher, paper 21): an MLP encoder trained with NT-Xent on two
augmented views of every image (full batch), cached on disk by the hash of what defines it, and
features of deterministically shifted copies for exemplar similarity."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from kd_engine.config import stable_hash
from kd_engine.data.augment import gaussian_noise, pixel_dropout, random_shift
from kd_engine.losses.contrastive import nt_xent
from kd_engine.models import build_model
from kd_engine.trainers.checkpoint import load_weights, save_weights

SIMCLR_DEFAULTS = {"hidden": 128, "dim": 64, "epochs": 100, "lr": 1e-3, "tau": 0.5, "shift": 1,
                   "noise": 0.1, "dropout": 0.1}


def contrastive_view(x: torch.Tensor, shift: int, noise: float, dropout: float) -> torch.Tensor:
    return pixel_dropout(gaussian_noise(random_shift(x, shift), noise), dropout)


def build_encoder(input_shape, hidden: int, dim: int) -> torch.nn.Module:
    return build_model(SimpleNamespace(name="mlp", params={"hidden": hidden, "layers": 1}), input_shape, dim)


def train_simclr(x: torch.Tensor, seed: int, hidden: int = 128, dim: int = 64, epochs: int = 100,
                 lr: float = 1e-3, tau: float = 0.5, shift: int = 1, noise: float = 0.1,
                 dropout: float = 0.1) -> tuple[torch.nn.Module, list[float]]:
    """Full-batch SimCLR with Adam; returns the encoder (eval mode) and the loss per epoch. The
    global torch RNG is saved and restored, so the caller's random stream is left as it was."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    encoder = build_encoder(x.shape[1:], hidden, dim)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        v1, v2 = (contrastive_view(x, shift, noise, dropout) for _ in range(2))
        loss = nt_xent(encoder(v1), encoder(v2), tau)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    optimizer.zero_grad(set_to_none=True)
    torch.set_rng_state(state)
    return encoder.eval().requires_grad_(False), losses


def cached_simclr(x: torch.Tensor, ids: torch.Tensor, seed: int, cache_dir: str | Path,
                  **settings) -> tuple[torch.nn.Module, str]:
    """The encoder for exactly these images (by instance id), these settings and this seed:
    loaded from ``<cache_dir>/simclr/<hash>.safetensors`` when present, else trained and saved."""
    settings = {**SIMCLR_DEFAULTS, **settings}
    key = stable_hash({"ids": ids.tolist(), "seed": seed, "settings": settings, "version": 1})
    path = Path(cache_dir) / "simclr" / f"{key}.safetensors"
    if path.is_file():
        encoder = build_encoder(x.shape[1:], settings["hidden"], settings["dim"])
        load_weights(encoder, path, field="simclr cache")
        return encoder.eval().requires_grad_(False), str(path)
    encoder, losses = train_simclr(x, seed, **settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(encoder, path, {"settings": settings, "seed": seed, "losses": losses})
    return encoder, str(path)


SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


@torch.no_grad()
def shifted_features(encoder: torch.nn.Module, x: torch.Tensor, shifts=SHIFTS) -> torch.Tensor:
    """(S, N, D) L2-normalised features of each image shifted by each (dy, dx), zero-filled."""
    out = []
    for dy, dx in shifts:
        moved = torch.roll(F.pad(x, (1, 1, 1, 1)), shifts=(dy, dx), dims=(2, 3))[:, :, 1:-1, 1:-1]
        out.append(F.normalize(encoder(moved), dim=1))
    return torch.stack(out)
