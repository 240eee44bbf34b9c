"""Reading intermediate outputs by module path, for feature distillation and analysis."""
from __future__ import annotations

from contextlib import contextmanager
from difflib import get_close_matches
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


def unknown_layer(model: nn.Module, name: str, field: str | None = None) -> ConfigError:
    """The one-line error for a layer name the model lacks: the config field, the nearest module
    paths (difflib, over every module) and the layers worth distilling. `kdw layers` lists all."""
    avail = available_layers(model)
    paths = [n for n, _ in model.named_modules() if n]
    near = get_close_matches(str(name), paths, n=3, cutoff=0.5)
    shown = ", ".join(avail[:_MAX_LISTED]) + (", ..." if len(avail) > _MAX_LISTED else "")
    hint = f"nearest: {', '.join(near)}; " if near else ""
    where = f"{field}: " if field else ""
    return ConfigError(f"{where}unknown layer {name!r} for {type(model).__name__} "
                       f"({hint}available: {shown}; `kdw layers` lists every module path)")


def resolve_layers(model: nn.Module, names: Sequence[str] | str,
                   field: str | None = None) -> dict[str, nn.Module]:
    """Module for each name (any module path is accepted); ConfigError naming ``field`` and the
    nearest valid names otherwise."""
    if isinstance(names, str):
        names = [names]
    modules = dict(model.named_modules())
    out: dict[str, nn.Module] = {}
    for name in names:
        if name not in modules or name == "":
            raise unknown_layer(model, name, field)
        out[name] = modules[name]
    return out


@contextmanager
def feature_taps(model: nn.Module, names: Sequence[str] | str,
                 field: str | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Yield a dict that each forward pass fills with ``name -> module output``.

    Outputs keep their autograd graph (students are trained through them). Hooks are
    removed on exit, also when the body raises.
    """
    targets = resolve_layers(model, names, field)
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
                 names: Sequence[str] | str, field: str | None = None) -> dict[str, tuple[int, ...]]:
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
        with torch.no_grad(), feature_taps(model, names, field) as feats:
            model(dummy)
    finally:
        model.train(was_training)
    missing = [n for n in ([names] if isinstance(names, str) else names) if n not in feats]
    if missing:
        where = f"{field}: " if field else ""
        raise ConfigError(f"{where}layer {missing[0]!r} of {type(model).__name__} is not used in forward")
    return {n: feature_shape(t) for n, t in feats.items()}


def feature_shape(output) -> tuple[int, ...]:
    """Per-sample shape of a module output; a tuple/list output (e.g. an RNN's) is read at its
    first tensor, which is what a tap of that module hands to a loss."""
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        output = output[0]
    return tuple(output.shape[1:])


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Total number of parameter elements (optionally only those requiring grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def check_layer_pairs(student: nn.Module, teacher: nn.Module, pairs: Sequence, field: str) -> None:
    """Resolve each configured (student, teacher) layer pair now, so a typo in ``field`` (e.g.
    ``record.features``) fails before training with the field and the nearest names."""
    for index, pair in enumerate(pairs):
        resolve_layers(student, [pair.student], f"{field}.{index}.student")
        resolve_layers(teacher, [pair.teacher], f"{field}.{index}.teacher")
