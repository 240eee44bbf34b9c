"""Models by name; ``build_model(spec, input_shape, num_classes)`` is the one entry point the
trainer, ``kdw layers``, the dashboard and ``load_student`` all use.

The built-in models are small and CPU-friendly; ``torchvision``, ``timm`` and ``import``
(external.py) build any library architecture or a user's factory the same way.

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

from kd_engine.models.registry import MODELS, check_positive_int  # noqa: F401 (re-exported)
from kd_engine.models import cnn, mlp, vit  # noqa: F401
from kd_engine.models import ncd  # noqa: F401
from kd_engine.models import detectors  # noqa: F401
from kd_engine.models import experts, query_head  # noqa: F401
from kd_engine.models import external  # noqa: F401
from kd_engine.models import cifar_resnet, cifar_compact  # noqa: F401
from kd_engine.models import fcn  # noqa: F401
from kd_engine.models import film_unet  # noqa: F401
from kd_engine.models import editor  # noqa: F401
from kd_engine.models import clip_cnn  # noqa: F401
from kd_engine.models import two_tower  # noqa: F401
from kd_engine.models import bev  # noqa: F401
from kd_engine.models import pointnet  # noqa: F401
from kd_engine.models import cell_set  # noqa: F401
from kd_engine.models import roi_net  # noqa: F401
from kd_engine.models import echo_cnn  # noqa: F401
from kd_engine.models import segment_vit  # noqa: F401
from kd_engine.models.taps import count_parameters, feature_taps, layer_shapes


def model_params(name: str) -> list[str]:
    """The keyword params a registered model names (for error messages and the UI)."""
    cls = MODELS.get(name)
    return [n for n, p in inspect.signature(cls).parameters.items()
            if n not in ("input_shape", "num_classes") and p.kind is not p.VAR_KEYWORD]


def _passes_any_keyword(name: str) -> bool:
    """True for builders that hand unknown params on to a library (torchvision, timm, import)."""
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(MODELS.get(name)).parameters.values())


def build_model(spec: Any, input_shape: Sequence[int], num_classes: int,
                field: str = "model") -> nn.Module:
    """Build ``spec.name`` with ``spec.params``; bad names or values become a ConfigError."""
    name = getattr(spec, "name", None)
    cls = MODELS.get(name, field=f"{field}.name")
    params = dict(getattr(spec, "params", None) or {})
    if not _passes_any_keyword(name):
        reject_unknown(params, model_params(name), f"{field}.params", f"model {name}")
    try:
        return cls(input_shape=tuple(int(s) for s in input_shape), num_classes=int(num_classes),
                   **params)
    except (TypeError, ValueError, RuntimeError, AssertionError) as e:
        raise ConfigError(f"{field}.params: invalid value for model {name}: {str(e).splitlines()[0]}") from None


__all__ = ["MODELS", "build_model", "model_params", "feature_taps", "layer_shapes",
           "count_parameters"]
