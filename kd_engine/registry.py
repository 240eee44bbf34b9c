"""A tiny name -> object registry, so adding a method or model touches only its own module."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Generic, Iterator, TypeVar

from kd_engine.errors import ConfigError
from kd_engine.params import reject_unknown

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str, field: str | None = None) -> T:
        try:
            return self._items[name]
        except KeyError:
            where = f"{field}: " if field else ""
            raise ConfigError(
                f"{where}unknown {self.kind} {name!r} (allowed: {', '.join(self.names())})"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def construct(factory: Callable[..., Any], params: dict[str, Any], field: str, *args: Any) -> Any:
    """Call a builder with user params, turning a bad keyword into a one-line ConfigError."""
    signature = inspect.signature(factory)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    allowed = [n for n, p in list(signature.parameters.items())[len(args):]
               if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"]
    if not accepts_any:
        reject_unknown(params, allowed, field)
    try:
        return factory(*args, **params)
    except TypeError as exc:
        raise ConfigError(f"{field}: {exc}") from None
