"""Small CPU-friendly models; ``build_model(spec, input_shape, num_classes)`` is the entry point.

A model is registered in ``MODELS`` as a class taking ``input_shape``, ``num_classes`` and its
own keyword params; it exposes ``feature_layers`` (tappable names worth distilling) and
``embedding_layer`` (the penultimate representation).
"""
from __future__ import annotations

import inspect
from typing import Any, Sequence

from torch import nn

from kd_engine.errors import ConfigError
from kd_engine.params import reject_unknown
from kd_engine.registry import Registry

# Defined before the model modules are imported: they register themselves into it.
MODELS: Registry = Registry("model")


def check_positive_int(**values: Any) -> None:
    """Raise ValueError (turned into ConfigError by build_model) for a non-positive int param."""
    for key, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{key} must be a positive integer, got {v!r}")


from kd_engine.models import cnn, mlp, vit  # noqa: E402,F401
from kd_engine.models import ncd  # noqa: E402,F401
from kd_engine.models import detectors  # noqa: E402,F401
from kd_engine.models import experts, query_head  # noqa: E402,F401
from kd_engine.models import clip_cnn  # noqa: E402,F401
from kd_engine.models.taps import count_parameters, feature_taps, layer_shapes  # noqa: E402


def model_params(name: str) -> list[str]:
    """The keyword params a registered model accepts (for error messages and the UI)."""
    cls = MODELS.get(name)
    return [p for p in inspect.signature(cls).parameters if p not in ("input_shape", "num_classes")]


def build_model(spec: Any, input_shape: Sequence[int], num_classes: int,
                field: str = "model") -> nn.Module:
    """Build ``spec.name`` with ``spec.params``; bad names or values become a ConfigError."""
    name = getattr(spec, "name", None)
    cls = MODELS.get(name, field=f"{field}.name")
    params = dict(getattr(spec, "params", None) or {})
    allowed = model_params(name)
    reject_unknown(params, allowed, f"{field}.params", f"model {name}")
    try:
        return cls(input_shape=tuple(int(s) for s in input_shape), num_classes=int(num_classes),
                   **params)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{field}.params: invalid value for model {name}: {e}") from None


__all__ = ["MODELS", "build_model", "model_params", "feature_taps", "layer_shapes",
           "count_parameters"]
