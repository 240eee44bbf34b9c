"""The registry of distillation terms (`LOSSES`) and the decorator a loss registers with where it is
defined (`term`); `kd_engine.losses.terms` describes the input kinds and imports every module
that registers one."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from kd_engine.errors import ConfigError
from kd_engine.losses.standardize import with_standardize
from kd_engine.params import check_call
from kd_engine.registry import Registry

INPUT_KINDS = ("logits", "logits_target", "features", "adapted_features", "embedding", "maps", "module")
_POSITIONAL = {"logits": 2, "logits_target": 3, "features": 2, "adapted_features": 3, "embedding": 2,
               "maps": 2, "module": 1}


@dataclass(frozen=True)
class TermSpec:
    fn: Callable[..., Any]
    inputs: str

    @property
    def uses_layers(self) -> bool:
        return self.inputs in ("features", "adapted_features", "embedding", "maps", "module")

    @property
    def batch_level(self) -> bool:
        """Read from the loss itself (its module may set the flag after the definition)."""
        return bool(getattr(inspect.unwrap(self.fn), "batch_level", False))

    def check_params(self, params: dict[str, Any], field: str) -> dict[str, Any]:
        """Unknown names and values of the wrong kind or out of the range the loss's signature
        declares raise one ConfigError line; returns the params converted to their kinds."""
        return check_call(self.fn, params, field, skip=_POSITIONAL[self.inputs], owner="loss",
                          exclude=("reduction",))

    def check_shapes(self, s_shape: tuple, t_shape: tuple, field: str, layers: str) -> None:
        """Build-time shape check of the kinds defined here (``maps``: (C, H, W) on both sides)."""
        if self.inputs == "maps" and (len(s_shape) != 3 or len(t_shape) != 3):
            raise ConfigError(f"{field}: the loss needs (C, H, W) maps; {layers} have shapes "
                              f"{s_shape} and {t_shape}")

    def build_module(self, setup: TermSetup, params: dict[str, Any]):
        """The owned module of a ``module`` term (``None`` for the other kinds); a parameter value
        the module cannot use is one ConfigError line naming the term's params."""
        if self.inputs != "module":
            return None
        try:
            return self.fn(setup, **params)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{setup.field}.params: invalid value for loss {setup.loss}: {exc}") from None


LOSSES: Registry[TermSpec] = Registry("distillation loss")


def register_term(name: str, fn: Callable[..., Any], inputs: str) -> TermSpec:
    if inputs not in INPUT_KINDS:
        raise ValueError(f"term {name}: inputs must be one of {INPUT_KINDS}")
    if inputs in ("logits", "logits_target"):
        fn = with_standardize(fn)
    return LOSSES.register(name)(TermSpec(fn, inputs))


def term(name: str, inputs: str) -> Callable[[Callable], Callable]:
    """Register the decorated loss (or ``module`` term class) as term `name` taking `inputs`;
    the decorated object itself is returned unchanged."""
    def decorator(fn: Callable) -> Callable:
        register_term(name, fn, inputs)
        return fn
    return decorator
