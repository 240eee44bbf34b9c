"""``distill.params`` of a method: defaults, unknown keys and value types checked in one place,
so every mistake is a one-line ConfigError naming ``distill.params.<name>``."""
from __future__ import annotations

from typing import Any

from kd_engine.errors import ConfigError


def _kind_ok(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    return isinstance(value, type(default)) if default is not None else True


def read_params(params: dict[str, Any], defaults: dict[str, Any], method: str) -> dict[str, Any]:
    """Defaults overridden by ``params``; an unknown key or a value of the wrong kind raises."""
    for key, value in params.items():
        if key not in defaults:
            raise ConfigError(f"distill.params: unknown parameter {key!r} for method {method} "
                              f"(allowed: {', '.join(defaults)})")
        if not _kind_ok(value, defaults[key]):
            raise ConfigError(f"distill.params.{key}: expected a value like {defaults[key]!r}, "
                              f"got {value!r}")
    out = dict(defaults)
    out.update(params)
    return out


def check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"distill.params.{key}: {message}")
