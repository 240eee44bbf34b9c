"""Reading intermediate outputs by module path, for feature distillation and analysis."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from kd_engine.errors import ConfigError

_MAX_LISTED = 30


def available_layers(model: nn.Module) -> list[str]:
    """Names worth offering: ``model.feature_layers`` if defined, else every named module."""
    names = getattr(model, "feature_layers", None)
    if names:
        return list(names)
    return [n for n, _ in model.named_modules() if n]


def resolve_layers(model: nn.Module, names: Sequence[str] | str) -> dict[str, nn.Module]:
    """Module for each name (any module path is accepted); ConfigError listing valid names."""
    if isinstance(names, str):
        names = [names]
    modules = dict(model.named_modules())
    out: dict[str, nn.Module] = {}
    for name in names:
        if name not in modules or name == "":
            avail = available_layers(model)
            shown = ", ".join(avail[:_MAX_LISTED]) + (", ..." if len(avail) > _MAX_LISTED else "")
            raise ConfigError(f"unknown layer {name!r} for {type(model).__name__} "
                              f"(available: {shown})")
        out[name] = modules[name]
    return out


@contextmanager
def feature_taps(model: nn.Module, names: Sequence[str] | str) -> Iterator[dict[str, torch.Tensor]]:
    """Yield a dict that each forward pass fills with ``name -> module output``.

    Outputs keep their autograd graph (students are trained through them). Hooks are
    removed on exit, also when the body raises.
    """
    targets = resolve_layers(model, names)
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            captured[name] = output

        return hook

    try:
        for name, module in targets.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        yield captured
    finally:
        for h in handles:
            h.remove()


def layer_shapes(model: nn.Module, input_shape: Sequence[int],
                 names: Sequence[str] | str) -> dict[str, tuple[int, ...]]:
    """Per-sample output shape (batch dimension dropped) of each named layer.

    Runs a dummy batch of 2 in eval mode without gradients, then restores the mode, so
    building projectors does not disturb BatchNorm statistics.
    """
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    dummy = torch.zeros((2, *[int(s) for s in input_shape]), device=device, dtype=dtype)
    try:
        model.eval()
        with torch.no_grad(), feature_taps(model, names) as feats:
            model(dummy)
    finally:
        model.train(was_training)
    missing = [n for n in ([names] if isinstance(names, str) else names) if n not in feats]
    if missing:
        raise ConfigError(f"layer {missing[0]!r} of {type(model).__name__} is not used in forward")
    return {n: tuple(t.shape[1:]) for n, t in feats.items()}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Total number of parameter elements (optionally only those requiring grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
