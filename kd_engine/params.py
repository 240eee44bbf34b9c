"""One checker for every ``*.params`` mapping (methods, datasets, models, losses, searches).

``read_params(params, defaults, field, owner)`` rejects unknown keys, checks each value against the
kind of its default and returns the defaults merged with ``params``; ``reject_unknown`` is the
unknown-key part alone, for modules that check their values themselves. Every mistake is one
ConfigError line naming the field:

    <field>: unknown parameter 'k' for <owner> (allowed: a, b)
    <field>.<k>: expected ..., got ...
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from kd_engine.errors import ConfigError


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def reject_unknown(params: Iterable[str], allowed: Iterable[str], field: str, owner: str = "") -> None:
    """Raise on the first key of ``params`` not in ``allowed``."""
    allowed = list(allowed)
    for key in params:
        if key not in allowed:
            where = f" for {owner}" if owner else ""
            raise ConfigError(f"{field}: unknown parameter {key!r}{where} "
                              f"(allowed: {', '.join(allowed) or 'none'})")


def _kind(value: Any, default: Any, name: str) -> Any:
    """``value`` checked against (and numbers converted to) the kind of ``default``."""
    def fail(expected: str):
        raise ConfigError(f"{name}: expected {expected}, got {value!r}")

    if default is None:
        return value
    if isinstance(default, bool):
        return value if isinstance(value, bool) else fail("true or false")
    if isinstance(default, int):
        if not _number(value) or float(value) != int(value):
            fail("an integer")
        return int(value)
    if isinstance(default, float):
        return float(value) if _number(value) else fail("a number")
    if isinstance(default, str):
        return value if isinstance(value, str) else fail("a string")
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            fail("a list")
        if default and all(_number(v) for v in default) and not all(_number(v) for v in value):
            fail("a list of numbers")
        return value
    if isinstance(default, Mapping):
        return value if isinstance(value, Mapping) else fail("a mapping")
    return value if isinstance(value, type(default)) else fail(f"a value like {default!r}")


def read_params(params: Mapping[str, Any] | None, defaults: Mapping[str, Any], field: str,
                owner: str = "") -> dict[str, Any]:
    """``defaults`` overridden by ``params``; an unknown key or a value of the wrong kind raises."""
    params = dict(params or {})
    reject_unknown(params, defaults, field, owner)
    out = dict(defaults)
    for key, value in params.items():
        out[key] = _kind(value, defaults[key], f"{field}.{key}")
    return out


def check(condition: bool, field: str, message: str) -> None:
    """A one-line ConfigError ``<field>: <message>`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{field}: {message}")
