"""Safe YAML for configs: PyYAML's SafeLoader (no Python objects) plus a budget on how far
anchors and aliases may expand the document, so a small file cannot become gigabytes.

Configs (`kd_engine.config.load_raw`, `--set`, the dashboard's launch form) and the config kept
in a run's store are all read through `safe_yaml`.
"""
from __future__ import annotations

from typing import Any

import yaml

from kd_engine.errors import ConfigError

# A config's YAML may share a value through an anchor (&x) and aliases (*x), but the document,
# fully expanded, may not hold more than this many more nodes than it has written out: a
# "billion laughs" file of 1 KB otherwise expands to gigabytes when the config is copied or saved.
ALIAS_EXPANSION_BUDGET = 10_000


class BudgetLoader(yaml.SafeLoader):
    """A SafeLoader that measures the document's expanded size before constructing anything."""

    def compose_document(self):
        node = super().compose_document()
        _check_expansion(node)
        return node


class AliasBudgetExceeded(yaml.YAMLError):
    pass


def _check_expansion(root: yaml.Node) -> None:
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise AliasBudgetExceeded("an alias refers to the mapping or list that contains it")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        sizes[key] = total
        if total - len(sizes) > ALIAS_EXPANSION_BUDGET:
            raise AliasBudgetExceeded(
                f"anchors and aliases expand it by more than {ALIAS_EXPANSION_BUDGET} values")
        return total

    if root is not None:
        size(root)


def safe_yaml(text: str, source: str = "config") -> Any:
    """Parse YAML text with the safe loader and the alias budget; a problem is one ConfigError line
    naming `source` (and the line, for a syntax error)."""
    try:
        return yaml.load(text, Loader=BudgetLoader)  # noqa: S506 - a SafeLoader subclass
    except AliasBudgetExceeded as exc:
        raise ConfigError(f"{source}: refused: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}: not valid YAML{where}") from None
    except RecursionError:
        raise ConfigError(f"{source}: refused: nested too deeply") from None
