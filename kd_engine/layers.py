"""`kdw layers`: every module path of a model that a feature term, ``record.features`` or an
adapter can tap, with the per-sample shape it outputs.

The model is given as a config file (its student and teacher, on its data's input shape) or a
spec: a registry name (``resnet``), ``torchvision:ARCH``, ``timm:ARCH``, ``import:pkg.mod:factory``
or an inline YAML mapping (``'{name: resnet, params: {width: 8}}'``).
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import torch
import yaml
from torch import nn

from kd_engine.errors import ConfigError

_SHORTHAND = {"torchvision": "arch", "timm": "arch", "import": "target"}


def parse_input(text: str) -> tuple[int, ...]:
    """``3x32x32`` -> (3, 32, 32)."""
    try:
        shape = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise ConfigError(f"--input {text!r}: expected sizes joined by x, e.g. 3x32x32")
    return shape


def parse_spec(text: str, params: dict[str, Any] | None = None) -> SimpleNamespace:
    """A model spec from the command line (see the module docstring for the forms)."""
    if text.lstrip().startswith("{"):
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError:
            raw = None
        if not isinstance(raw, dict) or "name" not in raw:
            raise ConfigError(f"model spec {text!r}: expected a mapping with a name, e.g. '{{name: resnet}}'")
        spec = SimpleNamespace(name=raw["name"], params=dict(raw.get("params") or {}))
    else:
        name, _, rest = text.partition(":")
        spec = SimpleNamespace(name=name, params={})
        if rest:
            if name not in _SHORTHAND:
                raise ConfigError(f"model spec {text!r}: NAME:VALUE is for {', '.join(_SHORTHAND)}")
            spec.params[_SHORTHAND[name]] = rest
    spec.params.update(params or {})
    return spec


def list_layers(model: nn.Module, input_shape: Sequence[int]) -> list[dict[str, Any]]:
    """One row per named module: path, type, output shape (None when forward does not call it),
    and whether the model offers it as a feature layer or as its embedding."""
    modules = [(n, m) for n, m in model.named_modules() if n]
    shapes: dict[str, str] = {}

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            shapes.setdefault(name, describe_output(output))
        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in modules]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(2, *[int(s) for s in input_shape]))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    features = set(getattr(model, "feature_layers", None) or [])
    embedding = getattr(model, "embedding_layer", None)
    return [{"layer": n, "type": type(m).__name__, "shape": shapes.get(n),
             "role": "embedding" if n == embedding else ("feature" if n in features else "")}
            for n, m in modules]


def describe_output(output: Any) -> str:
    if isinstance(output, torch.Tensor):
        return "x".join(str(s) for s in output.shape[1:]) or "scalar"
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return describe_output(output[0]) + f" (first of {len(output)})"
    if isinstance(output, dict):
        return "{" + ", ".join(f"{k}: {describe_output(v)}" for k, v in output.items()) + "}"
    return type(output).__name__


def _models_of(target: str, input_text: str | None, classes: int,
               params: dict[str, Any] | None) -> list[tuple[str, Any, tuple[int, ...], int]]:
    """(role, spec, input shape, classes) for each model the target names."""
    path = Path(target)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        from kd_engine.config import load_config

        cfg = load_config(path)
        if input_text:
            shape, n = parse_input(input_text), classes
        else:  # the data decides the input shape and the classes, as in training
            from kd_engine.data import build_data

            data = build_data(cfg.data, cfg.seed)
            shape, n = tuple(data.input_shape), int(data.num_classes)
        roles = [("student", cfg.student)] + ([("teacher", cfg.teacher)] if cfg.teacher else [])
        return [(role, spec, shape, n) for role, spec in roles]
    return [("model", parse_spec(target, params), parse_input(input_text or "3x32x32"), classes)]


def layers_table(target: str, input_text: str | None = None, classes: int = 10,
                 params: dict[str, Any] | None = None) -> str:
    from kd_engine.models import build_model

    blocks = []
    for role, spec, shape, n in _models_of(target, input_text, classes, params):
        model = build_model(spec, shape, n, field=role)
        rows = list_layers(model, shape)
        width = max([len(r["layer"]) for r in rows] + [5])
        type_width = max([len(r["type"]) for r in rows] + [4])
        head = (f"{role}: {spec.name} {dict(spec.params) or ''} on input {'x'.join(map(str, shape))}, "
                f"{n} classes ({len(rows)} modules; feature = offered for distillation and recording)")
        lines = [head, f"  {'layer':<{width}}  {'type':<{type_width}}  output        role"]
        for r in rows:
            lines.append(f"  {r['layer']:<{width}}  {r['type']:<{type_width}}  "
                         f"{r['shape'] or '(not called)':<12}  {r['role']}".rstrip())
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
