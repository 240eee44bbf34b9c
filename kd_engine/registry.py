"""A tiny name -> object registry, so adding a method or model touches only its own module."""
from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, TypeVar

from kd_engine.errors import ConfigError
from kd_engine.params import check_call

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
    """Call a builder with user params, after ``args``: an unknown keyword, or a value of the wrong
    kind or outside the range its annotation declares (``kd_engine.params``), is one ConfigError
    line. ``field`` may end in a note, e.g. ``weighting.params (strategy aid)``; a value's field is
    then ``weighting.params.alpha``."""
    base = field.split(" (", 1)[0]
    kinds_checked = check_call(factory, params, base, skip=len(args), owner=field[len(base):].strip(" ()"))
    try:
        return factory(*args, **kinds_checked)
    except TypeError as exc:
        raise ConfigError(f"{field}: {exc}") from None
