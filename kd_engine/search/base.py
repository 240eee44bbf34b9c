"""What every search shares: the registry of strategies, the discrete space, the search directory.

A search directory (`<runs_dir>/_searches/<search id>/`) holds `search.json` (what the search
is: strategy, budget, the base config, the Optuna storage URL where there is one) and, for the
sequential strategies (`mcts`, `random`), `state.json`: every evaluation (config, reward, run id,
wall time, metrics) and the strategy's own state (the MCTS tree, the random generator), rewritten
atomically after each evaluation so an interrupted search resumes without losing or repeating one.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd_engine.errors import ConfigError
from kd_engine.registry import Registry

STRATEGIES: Registry[Any] = Registry("search strategy")
SEARCHES_DIR = "_searches"


@dataclass(frozen=True)
class Space:
    """An ordered product of discrete choices: dotted config key -> allowed values. The order is
    the order of the MCTS tree's levels."""

    levels: tuple[tuple[str, tuple[Any, ...]], ...]

    @classmethod
    def from_config(cls, space: dict[str, Any], field: str = "search.space") -> "Space":
        if not space:
            raise ConfigError(f"{field}: give at least one dotted config key with a list of values")
        levels = []
        for key, values in space.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{field}.{key}: expected a non-empty list of values, got {values!r}")
            levels.append((str(key), tuple(values)))
        return cls(tuple(levels))

    @property
    def keys(self) -> list[str]:
        return [k for k, _ in self.levels]

    @property
    def size(self) -> int:
        total = 1
        for _, values in self.levels:
            total *= len(values)
        return total

    def config(self, indices: list[int] | tuple[int, ...]) -> dict[str, Any]:
        """Dotted key -> value for a full path of choice indices."""
        return {key: values[i] for (key, values), i in zip(self.levels, indices)}


def atomic_write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def search_dir(runs_dir: str | Path, search_id: str) -> Path:
    return Path(runs_dir) / SEARCHES_DIR / search_id


def write_description(root: Path, search_id: str, strategy: str, budget: int, base: dict[str, Any],
                      **extra: Any) -> None:
    """search.json: written once when the search starts (kept on resume)."""
    path = root / "search.json"
    if path.is_file():
        return
    atomic_write_json(path, {"search_id": search_id, "strategy": strategy, "budget": budget,
                             "created": time.time(), "base_config": base, **extra})
