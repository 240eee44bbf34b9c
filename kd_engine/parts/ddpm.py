"""A tiny class-conditional DDPM on flattened digits, and the pieces of score distillation.

Why it is here: score distillation (SDS) needs a frozen diffusion model that can say, for a noisy
image x_t and a class c, which noise ε̂(x_t, t, c) it believes was added. The gap ε̂ − ε between
that belief and the noise actually added points from the image towards what the model expects of
class c; pushing that gap into an editor's output (without differentiating the denoiser) edits
towards the class. Everything below is a pure function except the denoiser and its cached training.

* ``alpha_bar(steps)``: ᾱ_t = Π_{s≤t}(1 − β_s) for the linear β schedule 1e-4 … 0.02.
* ``q_sample``: the forward noising x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (closed form, no loop).
* ``guided_eps``: classifier-free guidance ε̂ = ε_u + s(ε_c − ε_u); the denoiser was trained with
  10% of labels replaced by a null token, so it also predicts the unconditional ε_u.
* ``sds_gradient``: g = w(t)(ε̂ − ε) with w(t) = 1 − ᾱ_t (no denoiser Jacobian).
* ``sds_surrogate``: Σ sg(g) ⊙ x per sample, whose gradient with respect to x is exactly g.
* ``gradient_entropy``: H = −Σ q log q with q = softmax over pixels of |g| (low H: a spatially
  focused gradient).

The denoiser works on images mapped to [−1, 1] (``to_model``); callers pass [0, 1] images.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kd_engine.config import stable_hash
from kd_engine.trainers.checkpoint import load_weights, save_weights

DDPM_DEFAULTS = {"steps": 200, "hidden": 256, "train_steps": 3000, "batch": 128, "lr": 2e-3, "p_uncond": 0.1}


def alpha_bar(steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """(steps,) cumulative products ᾱ_t of the linear β schedule, t = 0 … steps−1."""
    return torch.cumprod(1.0 - torch.linspace(beta_start, beta_end, steps, dtype=torch.float64), 0).float()


def q_sample(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε for (B, D) x0 and eps and (B,) integer timesteps t."""
    a = abar[t].unsqueeze(1)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def to_model(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) images in [0, 1] -> (B, H·W) in [−1, 1], the denoiser's space."""
    return x.flatten(1) * 2 - 1


def guided_eps(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance ε̂ = ε_u + s(ε_c − ε_u); s = 1 is the plain conditional model."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def sds_gradient(eps_hat: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """g = w(t)(ε̂ − ε), w(t) = 1 − ᾱ_t: the score-distillation gradient on x_0, (B, D)."""
    return (1 - abar[t]).unsqueeze(1) * (eps_hat - eps)


def sds_surrogate(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """(B,) Σ_d sg(g)_d · x_d: a loss whose gradient with respect to x is g (its value means nothing)."""
    return (grad.detach() * x.flatten(1)).sum(1)


def gradient_entropy(grad: torch.Tensor) -> torch.Tensor:
    """(B, D) gradients -> (B,) entropy (nats) of q = softmax over the D pixels of |g|: log D for a
    uniform |g|, towards 0 when one pixel dominates."""
    logq = F.log_softmax(grad.abs().flatten(1), dim=1)
    return -(logq.exp() * logq).sum(1)


def timestep_embedding(t: torch.Tensor, dim: int = 32) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    angles = t.float().unsqueeze(1) * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class Denoiser(nn.Module):
    """ε̂(x_t, t, c): an MLP over [x_t, sinusoidal t, class embedding]; class ``num_classes`` is
    the null token (the unconditional model)."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 256, temb: int = 32):
        super().__init__()
        self.num_classes, self.temb = num_classes, temb
        self.label = nn.Embedding(num_classes + 1, temb)
        self.net = nn.Sequential(nn.Linear(dim + 2 * temb, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                 nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x_t, timestep_embedding(t, self.temb), self.label(c)], dim=1))

    def guided(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor, scale: float) -> torch.Tensor:
        null = torch.full_like(c, self.num_classes)
        both = self(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([c, null]))
        cond, uncond = both.chunk(2)
        return guided_eps(cond, uncond, scale)


def train_ddpm(x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int, steps: int = 200,
               hidden: int = 256, train_steps: int = 3000, batch: int = 128, lr: float = 2e-3,
               p_uncond: float = 0.1) -> Denoiser:
    """ε-prediction MSE on (B, D) images in [−1, 1], 10% null labels; the caller's RNG is kept."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    model = Denoiser(x.shape[1], num_classes, hidden)
    abar = alpha_bar(steps)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, train_steps)
    for _ in range(train_steps):
        pick = torch.randint(len(x), (batch,))
        x0, c = x[pick], y[pick].clone()
        c[torch.rand(batch) < p_uncond] = num_classes
        t = torch.randint(steps, (batch,))
        eps = torch.randn_like(x0)
        loss = F.mse_loss(model(q_sample(x0, t, eps, abar), t, c), eps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    torch.set_rng_state(state)
    return model.eval().requires_grad_(False)


def cached_ddpm(x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, num_classes: int, seed: int,
                cache_dir: str | Path, **settings) -> tuple[Denoiser, str]:
    """The denoiser for exactly these images (by instance id), settings and seed: loaded from
    ``<cache_dir>/ddpm/<hash>.safetensors`` when present, else trained and saved."""
    settings = {**DDPM_DEFAULTS, **settings}
    key = stable_hash({"ids": ids.tolist(), "seed": seed, "settings": settings, "version": 1})
    path = Path(cache_dir) / "ddpm" / f"{key}.safetensors"
    if path.is_file():
        model = Denoiser(x.shape[1], num_classes, settings["hidden"])
        load_weights(model, path, field="ddpm cache")
        return model.eval().requires_grad_(False), str(path)
    model = train_ddpm(x, y, num_classes, seed, **settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model, path, {"model": "ddpm_denoiser", "params": settings})
    return model, str(path)
