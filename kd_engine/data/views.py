"""Seeded tensor augmentations for two-view (and multi-crop) self-distillation.

Every view is drawn from an explicit ``torch.Generator``: the same generator state gives the same
views bit for bit, and two calls in a row give two different views. ``step_generator(seed, step,
stream)`` derives one generator per (run seed, optimisation step, view stream), so a resumed run
replays the same augmentations and the two views of a step never share their randomness.

One view = one affine resampling (random resized crop of relative area ``scale``, aspect ratio in
``ratio``, rotation of up to ±``rotation`` degrees, optional horizontal flip) of the whole batch
with ``grid_sample``, then Gaussian noise of std ``noise`` and one ``erase``×``erase`` square set
to zero (random erasing) with probability ``erase_prob``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

from kd_engine.errors import ConfigError


@dataclass(frozen=True)
class ViewSpec:
    scale: tuple[float, float] = (0.4, 1.0)
    ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    rotation: float = 10.0          # degrees, uniform in [-rotation, rotation]
    flip: bool = False              # horizontal flips (off for digits: a flipped 2 is not a 2)
    noise: float = 0.05             # std of additive Gaussian noise
    erase: int = 2                  # side of the erased square in pixels (0: none)
    erase_prob: float = 1.0

    @classmethod
    def from_params(cls, params: dict | None, field: str = "distill.params.views") -> "ViewSpec":
        """A spec from a config mapping; unknown keys and bad ranges are one-line ConfigErrors."""
        params = dict(params or {})
        names = [f.name for f in fields(cls)]
        for key in params:
            if key not in names:
                raise ConfigError(f"{field}: unknown view parameter {key!r} (allowed: {', '.join(names)})")
        spec = replace(cls(), **{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})
        lo, hi = spec.scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"{field}.scale: need 0 < low <= high <= 1, got {list(spec.scale)}")
        if not 0.0 < spec.ratio[0] <= spec.ratio[1]:
            raise ConfigError(f"{field}.ratio: need 0 < low <= high, got {list(spec.ratio)}")
        if spec.noise < 0 or spec.rotation < 0 or spec.erase < 0 or not 0 <= spec.erase_prob <= 1:
            raise ConfigError(f"{field}: noise, rotation, erase must be >= 0 and erase_prob in [0, 1]")
        return spec


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A generator fixed by (seed, step, stream): distinct streams give independent views."""
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(step) * 7919 + int(stream) * 104_729) % (2**63 - 1))
    return g


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def random_view(x: torch.Tensor, spec: ViewSpec, generator: torch.Generator,
                scale: tuple[float, float] | None = None) -> torch.Tensor:
    """One augmented view of the batch ``x`` (B, C, H, W), same size; ``scale`` overrides the
    spec's crop area (multi-crop's small crops). Random numbers are drawn on the CPU generator in
    a fixed order, then moved to ``x``'s device."""
    b, c, h, w = x.shape
    lo, hi = scale or spec.scale
    area = _uniform(b, lo, hi, generator)
    log_r = _uniform(b, math.log(spec.ratio[0]), math.log(spec.ratio[1]), generator)
    ratio = torch.exp(log_r)
    sx = torch.sqrt(area * ratio).clamp(max=1.0)      # crop width / image width
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (1 - sx) * (2 * torch.rand(b, generator=generator) - 1)  # crop centre, inside the image
    ty = (1 - sy) * (2 * torch.rand(b, generator=generator) - 1)
    angle = torch.deg2rad(_uniform(b, -spec.rotation, spec.rotation, generator))
    flip = (torch.rand(b, generator=generator) < 0.5) if spec.flip else torch.zeros(b, dtype=torch.bool)
    sign = 1.0 - 2.0 * flip.float()
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([sx * cos * sign, -sy * sin, tx], 1),
                         torch.stack([sx * sin * sign, sy * cos, ty], 1)], 1)
    noise = torch.randn(x.shape, generator=generator) * spec.noise
    ey = torch.randint(0, max(1, h - spec.erase + 1), (b,), generator=generator)
    ex = torch.randint(0, max(1, w - spec.erase + 1), (b,), generator=generator)
    do_erase = torch.rand(b, generator=generator) < spec.erase_prob
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out + noise.to(x.device, x.dtype)
    if spec.erase > 0:
        rows = torch.arange(h).view(1, h, 1)
        cols = torch.arange(w).view(1, 1, w)
        box = ((rows >= ey.view(b, 1, 1)) & (rows < ey.view(b, 1, 1) + spec.erase)
               & (cols >= ex.view(b, 1, 1)) & (cols < ex.view(b, 1, 1) + spec.erase))
        box = box & do_erase.view(b, 1, 1)
        out = out.masked_fill(box.unsqueeze(1).to(x.device), 0.0)
    return out


def two_views(x: torch.Tensor, spec: ViewSpec, seed: int, step: int,
              partner: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(view 1 of ``x``, view 2 of ``partner`` or of ``x``), from streams 0 and 1 of the step."""
    v1 = random_view(x, spec, step_generator(seed, step, 0))
    v2 = random_view(x if partner is None else partner, spec, step_generator(seed, step, 1))
    return v1, v2


def multi_crop(x: torch.Tensor, spec: ViewSpec, seed: int, step: int, n_global: int = 2,
               n_local: int = 0, local_scale: tuple[float, float] = (0.1, 0.4)) -> list[torch.Tensor]:
    """DINO's multi-crop: ``n_global`` views at the spec's scale, then ``n_local`` small crops
    (resampled to the same size here, which keeps tiny models simple), one stream each."""
    views = [random_view(x, spec, step_generator(seed, step, i)) for i in range(n_global)]
    views += [random_view(x, spec, step_generator(seed, step, n_global + i), scale=local_scale)
              for i in range(n_local)]
    return views
