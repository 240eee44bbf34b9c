"""One checker for every ``*.params`` mapping (methods, datasets, models, losses, weightings,
optimizers, searches): names *and* values.

A parameter declares its kind and range where it is defined, with ``typing.Annotated`` and
``annotated_types`` on the signature of the function or constructor that takes it::

    def kd(s, t, temperature: Annotated[float, Gt(0)] = 4.0, reduction="mean"): ...

or, for a method that reads a mapping of defaults, with ``Param``::

    DEFAULTS = {"temperature": Param(4.0, Gt(0)), "k": Param(5, Ge(1)), "mode": "max"}

and this module enforces them in one place: ``check_call`` (used by ``registry.construct`` and the
loss terms) and ``read_params``. Every mistake is one ConfigError line naming the field, the value
and what is allowed, before anything trains::

    <field>: unknown parameter 'k' for <owner> (allowed: a, b)
    <field>.<k>: expected a number > 0, got -1
    <field>.<k>: expected one of 'max', 'target', got 'min'

Kinds: ``float`` takes any number but not true/false (an int becomes a float; a string such as
"1e-3", which YAML 1.1 does not read as a number, is converted); ``int`` takes an
integer (2.0 becomes 2); ``bool`` takes only true/false; ``str``; ``Literal[...]`` takes one of
its values; ``X | None`` also takes null; ``list[X]``/``tuple[X, ...]`` check every item.
A number with a range must be finite (NaN and infinity are refused).
"""
from __future__ import annotations

import inspect
import math
import re
import types
import typing
from collections import abc
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import annotated_types as at

from kd_engine.errors import ConfigError

_BOUNDS = (at.Gt, at.Ge, at.Lt, at.Le)

_YAML_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")

# Kinds that recur across losses, methods and weightings.
Probability = typing.Annotated[float, at.Interval(ge=0, le=1)]


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


# -- ranges ---------------------------------------------------------------------------------------
def _bounds(metadata: Iterable[Any]) -> list[Any]:
    """The Gt/Ge/Lt/Le constraints in ``metadata`` (an ``Interval`` expands into its parts)."""
    out = []
    for item in metadata:
        if isinstance(item, _BOUNDS):
            out.append(item)
        elif isinstance(item, at.GroupedMetadata):
            out.extend(_bounds(item))
    return out


def _fmt(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def describe_range(bounds: list[Any]) -> str:
    """``> 0``, ``>= 1``, ``in [0, 1]``, ``in [0, 1)``... for a list of Gt/Ge/Lt/Le."""
    low = next((b for b in bounds if isinstance(b, (at.Gt, at.Ge))), None)
    high = next((b for b in bounds if isinstance(b, (at.Lt, at.Le))), None)
    if low is not None and high is not None:
        left = "(" if isinstance(low, at.Gt) else "["
        right = ")" if isinstance(high, at.Lt) else "]"
        lo = low.gt if isinstance(low, at.Gt) else low.ge
        hi = high.lt if isinstance(high, at.Lt) else high.le
        return f"in {left}{_fmt(lo)}, {_fmt(hi)}{right}"
    if low is not None:
        return f"> {_fmt(low.gt)}" if isinstance(low, at.Gt) else f">= {_fmt(low.ge)}"
    if high is not None:
        return f"< {_fmt(high.lt)}" if isinstance(high, at.Lt) else f"<= {_fmt(high.le)}"
    return ""


def _within(value: float, bounds: list[Any]) -> bool:
    for b in bounds:
        if ((isinstance(b, at.Gt) and not value > b.gt) or (isinstance(b, at.Ge) and not value >= b.ge)
                or (isinstance(b, at.Lt) and not value < b.lt) or (isinstance(b, at.Le) and not value <= b.le)):
            return False
    return True


# -- kinds ----------------------------------------------------------------------------------------
def _split(annotation: Any) -> tuple[Any, list[Any]]:
    """(bare type, bounds) of a possibly ``Annotated`` annotation."""
    if typing.get_origin(annotation) is typing.Annotated:
        bare, *metadata = typing.get_args(annotation)
        inner, more = _split(bare)
        return inner, more + _bounds(metadata)
    return annotation, []


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def check_value(value: Any, annotation: Any, field: str) -> Any:
    """``value`` checked against ``annotation`` (converted where the kind says so), or one
    ConfigError line ``<field>: expected <kind and range>, got <value>``."""
    bare, bounds = _split(annotation)
    span = describe_range(bounds)

    def fail(expected: str):
        raise ConfigError(f"{field}: expected {expected}{' ' + span if span else ''}, got {value!r}")

    if bare is Any or bare is inspect.Parameter.empty:
        return value
    if _is_union(bare):
        options = typing.get_args(bare)
        if value is None and type(None) in options:
            return None
        real = [o for o in options if o is not type(None)]
        errors = []
        for option in real:
            try:
                return check_value(value, typing.Annotated[option, *bounds] if bounds else option, field)
            except ConfigError as exc:
                errors.append(str(exc))
        if len(real) == 1:
            raise ConfigError(errors[0].replace(", got", " (or null), got", 1)
                              if type(None) in options else errors[0])
        raise ConfigError(f"{field}: expected {' or '.join(_kind_name(o) for o in real)}, got {value!r}")
    if typing.get_origin(bare) is typing.Literal:
        choices = typing.get_args(bare)
        if any(value == c and type(value) is type(c) for c in choices):
            return value
        raise ConfigError(f"{field}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    if bare is bool:
        return value if isinstance(value, bool) else fail("true or false")
    if bare is int:
        if not _number(value) or not math.isfinite(value) or float(value) != int(value):
            fail("an integer")
        value = int(value)
        return value if _within(value, bounds) else fail("an integer")
    if bare is float:
        if isinstance(value, str) and _YAML_EXPONENT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if not _number(value):
            fail("a number")
        if bounds and not (math.isfinite(value) and _within(value, bounds)):
            fail("a number")
        return float(value)
    if bare is str:
        return value if isinstance(value, str) else fail("a string")
    origin = typing.get_origin(bare)
    if origin in (list, tuple, abc.Sequence) or bare in (list, tuple):
        if not isinstance(value, (list, tuple)):
            fail("a list")
        args = [a for a in typing.get_args(bare) if a is not Ellipsis]
        if origin is tuple and len(args) > 1 and Ellipsis not in typing.get_args(bare):
            if len(value) != len(args):
                fail(f"a list of {len(args)} items")
            return [check_value(v, a, f"{field}.{i}") for i, (v, a) in enumerate(zip(value, args))]
        if args and args[0] in (int, float) and not all(_number(v) for v in value):
            fail("a list of numbers")  # a plain list of numbers: the list is named, not an item
        if args:
            return [check_value(v, args[0], f"{field}.{i}") for i, v in enumerate(value)]
        return list(value)
    if origin in (dict, abc.Mapping) or bare in (dict,):
        return value if isinstance(value, Mapping) else fail("a mapping")
    if isinstance(bare, type):
        return value if isinstance(value, bare) else fail(f"a {bare.__name__}")
    return value


def _kind_name(annotation: Any) -> str:
    bare, _ = _split(annotation)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(bare, getattr(bare, "__name__", str(bare)))


def _kind_of_default(default: Any) -> Any:
    """The kind a plain default stands for (the rule ``read_params`` applied before ranges)."""
    if default is None:
        return Any
    for kind in (bool, int, float, str):
        if isinstance(default, kind):
            return kind
    if isinstance(default, (list, tuple)):
        if default and all(_number(v) for v in default):
            return list[float]
        return list
    if isinstance(default, Mapping):
        return dict
    return type(default)


@dataclass(frozen=True)
class Param:
    """A default with its range, for a ``read_params`` defaults mapping: ``Param(0.5, Interval(ge=0,
    le=1))``. ``kind`` overrides the kind inferred from the default (e.g. ``Literal["a", "b"]``, or
    ``float | None`` for a default of None)."""

    default: Any
    constraints: tuple[Any, ...] = ()
    kind: Any = None

    def __init__(self, default: Any, *constraints: Any, kind: Any = None):
        object.__setattr__(self, "default", default)
        object.__setattr__(self, "constraints", constraints)
        object.__setattr__(self, "kind", kind)

    @property
    def annotation(self) -> Any:
        kind = self.kind if self.kind is not None else _kind_of_default(self.default)
        return typing.Annotated[kind, *self.constraints] if self.constraints else kind


def _annotation_of_default(default: Any) -> Any:
    return default.annotation if isinstance(default, Param) else _kind_of_default(default)


def defaults_of(defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The plain default values of a mapping that may hold ``Param``s."""
    return {k: (v.default if isinstance(v, Param) else v) for k, v in defaults.items()}


def read_params(params: Mapping[str, Any] | None, defaults: Mapping[str, Any], field: str,
                owner: str = "") -> dict[str, Any]:
    """``defaults`` overridden by ``params``; an unknown key, a value of the wrong kind or out of
    its range raises. A default is a plain value (its kind is the default's) or a ``Param``."""
    params = dict(params or {})
    reject_unknown(params, defaults, field, owner)
    out = defaults_of(defaults)
    for key, value in params.items():
        out[key] = check_value(value, _annotation_of_default(defaults[key]), f"{field}.{key}")
    return out


# -- signatures -----------------------------------------------------------------------------------
def signature_kinds(factory: Callable[..., Any], skip: int = 0) -> tuple[dict[str, Any], bool]:
    """({keyword: annotation}, accepts **kwargs) of a function or class after ``skip`` positional
    arguments; string annotations (``from __future__ import annotations``) are resolved."""
    try:
        signature = inspect.signature(factory, eval_str=True)
    except NameError:  # an annotation names something its module does not import at run time
        signature = inspect.signature(factory)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    kinds = {n: p.annotation for n, p in list(signature.parameters.items())[skip:]
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"}
    return kinds, accepts_any


def check_call(factory: Callable[..., Any], params: Mapping[str, Any], field: str, skip: int = 0,
               owner: str = "", exclude: Iterable[str] = ()) -> dict[str, Any]:
    """``params`` checked against the keywords of ``factory`` (after ``skip`` positional
    arguments, leaving out ``exclude``): unknown names and bad values raise one ConfigError line.
    Returns the params with values converted to their kinds (ints to floats...)."""
    kinds, accepts_any = signature_kinds(factory, skip)
    for name in exclude:
        kinds.pop(name, None)
    if not accepts_any:
        reject_unknown(params, kinds, field, owner)
    return {key: check_value(value, kinds.get(key, Any), f"{field}.{key}") for key, value in params.items()}


def check(condition: bool, field: str, message: str) -> None:
    """A one-line ConfigError ``<field>: <message>`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{field}: {message}")
