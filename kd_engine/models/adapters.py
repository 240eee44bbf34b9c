"""Adapters: small trainable maps from a student feature to the teacher feature's shape, so a
feature term (``fitnet``) can compare layers of different widths or different architectures.

``ADAPTERS`` holds one builder per ``distill.terms.N.adapter`` name. A builder gets the
per-sample shapes (batch dimension dropped) of the student and teacher layers and returns the
module, or raises a one-line ConfigError saying why the shapes cannot be mapped.

- ``none``: the shapes must already agree.
- ``conv1x1``: (C, H, W) -> (C', H, W), a 1x1 convolution (FitNets' regressor).
- ``linear``: (..., D) -> (..., D'), a linear map on the last axis (vectors, or tokens to tokens).
- ``tokens_to_map``: ViT tokens (L, D) -> CNN map (C, H, W). Prefix tokens (a class token) are
  dropped, the remaining tokens are laid back on their patch grid (D, h, w), resized to (H, W)
  when the grids differ, and projected by a 1x1 convolution to C channels.
- ``map_to_tokens``: CNN map (C, H, W) -> ViT tokens (L, D). The map is resized to the token
  grid (h, w), flattened row-major (the order patch embeddings use) and projected by a linear
  map to D. Each prefix token is matched by the projected global average of the map, the CNN's
  nearest counterpart of a class token.

The token grid is inferred: with ``L`` tokens, the number of prefix tokens ``k`` (0, 1 or 2 tried
in turn) is the first for which ``L - k`` is a perfect square. Non-square grids, or models with
other prefix counts, give it: ``adapter_params: {grid: [h, w], prefix_tokens: k}``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kd_engine.errors import ConfigError
from kd_engine.params import reject_unknown
from kd_engine.registry import Registry

ADAPTERS: Registry = Registry("adapter")
_TOKEN_PARAMS = ("grid", "prefix_tokens")


def token_grid(length: int, params: dict[str, Any], field: str) -> tuple[tuple[int, int], int]:
    """((h, w), prefix tokens) of a sequence of ``length`` tokens: given, or inferred."""
    grid, prefix = params.get("grid"), params.get("prefix_tokens")
    if grid is not None:
        if (not isinstance(grid, (list, tuple)) or len(grid) != 2
                or not all(isinstance(g, int) and g > 0 for g in grid)):
            raise ConfigError(f"{field}.adapter_params.grid: expected [h, w] of positive ints, got {grid!r}")
        h, w = int(grid[0]), int(grid[1])
        k = length - h * w if prefix is None else int(prefix)
        if k < 0 or h * w + k != length:
            raise ConfigError(f"{field}.adapter_params: grid {h}x{w} with {k} prefix tokens does not "
                              f"make the layer's {length} tokens")
        return (h, w), k
    candidates = (int(prefix),) if prefix is not None else (0, 1, 2)
    for k in candidates:
        side = math.isqrt(max(length - k, 0))
        if side > 0 and side * side == length - k:
            return (side, side), k
    raise ConfigError(f"{field}: cannot infer a square token grid from {length} tokens; set "
                      "adapter_params: {grid: [h, w], prefix_tokens: k}")


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, *size): averaging when shrinking, bilinear when growing."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class TokensToMap(nn.Module):
    """(N, L, D) tokens -> (N, C, H, W): drop prefix tokens, un-flatten the grid, resize, 1x1 conv."""

    def __init__(self, dim: int, channels: int, grid: tuple[int, int], prefix: int,
                 size: tuple[int, int]):
        super().__init__()
        self.grid, self.prefix, self.size = tuple(grid), int(prefix), tuple(size)
        self.proj = nn.Conv2d(dim, channels, kernel_size=1, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, self.prefix:]
        n, _, d = patches.shape
        grid = patches.transpose(1, 2).reshape(n, d, *self.grid)
        return self.proj(_resize(grid, self.size))


class MapToTokens(nn.Module):
    """(N, C, H, W) -> (N, L, D): resize to the grid, flatten row-major, linear; prefix tokens
    from the projected global average."""

    def __init__(self, channels: int, dim: int, grid: tuple[int, int], prefix: int):
        super().__init__()
        self.grid, self.prefix = tuple(grid), int(prefix)
        self.proj = nn.Linear(channels, dim, bias=False)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(_resize(fmap, self.grid).flatten(2).transpose(1, 2))
        if not self.prefix:
            return tokens
        pooled = self.proj(fmap.mean(dim=(2, 3))).unsqueeze(1)
        return torch.cat([pooled.expand(-1, self.prefix, -1), tokens], dim=1)


Builder = Callable[[tuple, tuple, str, str, dict], "nn.Module | None"]


@ADAPTERS.register("none")
def _none(s_shape, t_shape, field, layers, params):
    if s_shape != t_shape:
        raise ConfigError(f"{field}: {layers} have shapes {s_shape} and {t_shape}; set adapter: conv1x1 "
                          "(maps), linear (vectors, tokens), tokens_to_map or map_to_tokens (ViT <-> CNN)")
    return None


@ADAPTERS.register("conv1x1")
def _conv1x1(s_shape, t_shape, field, layers, params):
    if len(s_shape) != 3 or len(t_shape) != 3 or s_shape[1:] != t_shape[1:]:
        hint = ""
        if len(s_shape) == 2 and len(t_shape) == 3:
            hint = "; for ViT tokens to a CNN map use adapter: tokens_to_map"
        elif len(s_shape) == 3 and len(t_shape) == 2:
            hint = "; for a CNN map to ViT tokens use adapter: map_to_tokens"
        raise ConfigError(f"{field}: adapter conv1x1 needs (C, H, W) maps of equal H, W; "
                          f"{layers} have shapes {s_shape} and {t_shape}{hint}")
    return nn.Conv2d(s_shape[0], t_shape[0], kernel_size=1, bias=False)


@ADAPTERS.register("linear")
def _linear(s_shape, t_shape, field, layers, params):
    if s_shape[:-1] != t_shape[:-1]:
        raise ConfigError(f"{field}: adapter linear needs equal leading sizes; "
                          f"{layers} have shapes {s_shape} and {t_shape}")
    return nn.Linear(s_shape[-1], t_shape[-1], bias=False)


@ADAPTERS.register("tokens_to_map")
def _tokens_to_map(s_shape, t_shape, field, layers, params):
    if len(s_shape) != 2 or len(t_shape) != 3:
        raise ConfigError(f"{field}: adapter tokens_to_map maps student tokens (L, D) to a teacher map "
                          f"(C, H, W); {layers} have shapes {s_shape} and {t_shape}")
    grid, prefix = token_grid(s_shape[0], params, field)
    return TokensToMap(s_shape[1], t_shape[0], grid, prefix, t_shape[1:])


@ADAPTERS.register("map_to_tokens")
def _map_to_tokens(s_shape, t_shape, field, layers, params):
    if len(s_shape) != 3 or len(t_shape) != 2:
        raise ConfigError(f"{field}: adapter map_to_tokens maps a student map (C, H, W) to teacher "
                          f"tokens (L, D); {layers} have shapes {s_shape} and {t_shape}")
    grid, prefix = token_grid(t_shape[0], params, field)
    return MapToTokens(s_shape[0], t_shape[1], grid, prefix)


def build_adapter(kind: str, s_shape: Sequence[int], t_shape: Sequence[int], field: str, layers: str,
                  params: dict[str, Any] | None = None) -> nn.Module | None:
    """The ``kind`` adapter from student shape to teacher shape, or a one-line ConfigError."""
    builder = ADAPTERS.get(kind, field=f"{field}.adapter")
    params = dict(params or {})
    reject_unknown(params, _TOKEN_PARAMS if kind in ("tokens_to_map", "map_to_tokens") else (),
                   f"{field}.adapter_params", f"adapter {kind}")
    return builder(tuple(s_shape), tuple(t_shape), field, layers, params)
