"""Edits of a raw config before it is validated (`kd_engine.config`): old key names moved to the
new ones, ``--set key=value`` overrides, and relative weight paths made absolute.

They work on the raw mapping read from YAML, never on the typed config, so they sit apart from
the schema; `kd_engine.config` re-exports them, so ``from kd_engine.config import apply_override``
keeps working.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import yaml

from kd_engine.errors import ConfigError
from kd_engine.yaml_load import AliasBudgetExceeded, BudgetLoader

log = logging.getLogger("kdw")

# Keys renamed so that each cache has one name: (path of the mapping, old key, new key).
RENAMED_KEYS = (((), "teacher_cache", "use_teacher_bank"),  # the teacher soft-label bank
                (("distill", "params"), "teacher_cache", "teacher_features"),  # Auto-KD's feature file
                (("search", "params"), "teacher_cache", "teacher_features"))


def rename_deprecated(raw: Any) -> Any:
    """A copy of a raw config with the old names of `RENAMED_KEYS` moved to the new ones, one
    logged deprecation line each (old configs keep working)."""
    if not isinstance(raw, dict):
        return raw
    raw = copy.copy(raw)
    for path, old, new in RENAMED_KEYS:
        parent, node = None, raw
        for key in path:
            parent, node = node, node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict) or old not in node:
            continue
        node = dict(node)
        value = node.pop(old)
        where = ".".join(path) + "." if path else ""
        if new in node and node[new] != value:
            raise ConfigError(f"{where}{old}: the old name of {where}{new}, which is set to another "
                              f"value; keep only {where}{new}")
        node[new] = value
        log.warning("config: %s%s is deprecated; it is now %s%s", where, old, where, new)
        if path:  # rebuild the path with copies, so the caller's mapping is left alone
            chain = [raw]
            for key in path[:-1]:
                chain.append(dict(chain[-1][key]))
                chain[-2][key] = chain[-1]
            chain[-1][path[-1]] = node
        else:
            raw = node
    return raw



def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` to a raw config dict; the value is parsed as YAML (safely)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value")
    key, value_text = assignment.split("=", 1)
    try:
        value = yaml.load(value_text, Loader=BudgetLoader) if value_text else None  # noqa: S506
    except AliasBudgetExceeded as exc:
        raise ConfigError(f"--set {key.strip()}: refused: {exc}") from None
    except yaml.YAMLError:
        value = value_text
    node: Any = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[_list_index(part, key, node)]
            continue
        if not isinstance(node.get(part), (dict, list)):
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(last, key, node)] = value
    else:
        node[last] = value


def _list_index(part: str, key: str, node: list) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set {key}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


# Weight files a config names; a relative one is read from the config file's folder.
CONFIG_RELATIVE_PATHS = (("teacher", "checkpoint"), ("student", "init"))


def resolve_relative_paths(raw: dict[str, Any], folder: Path) -> None:
    """Make ``teacher.checkpoint`` and ``student.init`` absolute against ``folder`` (in place), so
    a config runs the same from any working directory and its stored copy resumes anywhere."""
    for section, key in CONFIG_RELATIVE_PATHS:
        node = raw.get(section)
        value = node.get(key) if isinstance(node, dict) else None
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            node[key] = str((folder / value).resolve())
