"""The Runs page's launch form: a shipped config or edited YAML, plus widgets generated from the
config schema (`ExperimentConfig`); changed widgets become `--set`-style overrides."""
from __future__ import annotations

import hashlib
import typing
from typing import Any

import streamlit as st
import yaml
from pydantic import BaseModel

from kd_engine.config import ExperimentConfig, safe_yaml
from kd_engine.errors import ConfigError
from workbench import launcher

SECTIONS = ("", "data", "optimizer", "schedule", "weighting", "record", "student", "teacher")
SKIP = {"runs_dir", "cache_dir", "data.root", "data.params", "teacher.checkpoint"}


def _registry_choices(path: str) -> list[str] | None:
    try:
        if path == "method":
            from kd_engine.methods import METHODS as reg
        elif path == "weighting.strategy":
            from kd_engine.weighting import WEIGHTINGS as reg
        elif path == "data.name":
            from kd_engine.data import DATASETS as reg
        elif path in ("student.name", "teacher.name"):
            from kd_engine.models import MODELS as reg
        else:
            return None
    except ImportError:
        return None
    return reg.names()


def _scalar(annotation: Any) -> tuple[str, Any] | None:
    """('literal', choices) / ('bool'|'int'|'float'|'str', None) / None for non-scalars;
    Optional[...] is ('optional', inner)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "literal", list(args)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        inner = _scalar(rest[0]) if len(rest) == 1 else None
        return ("optional", inner) if inner else None
    for kind in (bool, int, float, str):
        if annotation is kind:
            return kind.__name__, None
    return None


def schema_fields() -> list[tuple[str, tuple[str, Any], Any]]:
    """(dotted path, kind, default) for every scalar key of the sections shown in the form."""
    out = []
    for section in SECTIONS:
        model: type[BaseModel] = ExperimentConfig
        if section:
            ann = ExperimentConfig.model_fields[section].annotation
            model = next(a for a in (ann, *typing.get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel))
        for name, field in model.model_fields.items():
            path = f"{section}.{name}" if section else name
            kind = _scalar(field.annotation)
            if kind is None or path in SKIP:
                continue
            default = None if field.is_required() else field.get_default(call_default_factory=True)
            out.append((path, kind, default))
    return out


def _get(raw: dict, path: str, default: Any) -> Any:
    node: Any = raw
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _widget(path: str, kind: tuple[str, Any], value: Any, key: str) -> Any:
    label = path
    choices = _registry_choices(path)
    if choices:
        options = choices if value in choices else [value, *choices]
        return st.selectbox(label, options, index=options.index(value), key=key)
    name, extra = kind
    if name == "literal":
        options = extra if value in extra else [value, *extra]
        return st.selectbox(label, options, index=options.index(value), key=key)
    if name == "bool" and isinstance(value, bool):
        return st.checkbox(label, value=value, key=key)
    if name == "int" and isinstance(value, int) and not isinstance(value, bool):
        return int(st.number_input(label, value=value, step=1, key=key))
    if name == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(st.number_input(label, value=float(value), format="%g", key=key))
    text = st.text_input(label, value="" if value is None else yaml.safe_dump(value).strip().removesuffix("..."),
                         key=key, help="YAML value; empty means null")
    return None if text.strip() == "" else safe_yaml(text, path)


def render(base) -> None:
    configs = launcher.shipped_configs()
    names = [str(p.relative_to(launcher.REPO)) for p in configs]
    if not names:
        st.warning(f"No shipped configs under {launcher.REPO / 'configs'}.")
        return
    source = st.selectbox("Start from a shipped config", names, key="launch_source",
                          index=names.index("configs/demo_kd.yaml") if "configs/demo_kd.yaml" in names else 0)
    text_default = (launcher.REPO / source).read_text()
    digest = hashlib.sha1(text_default.encode()).hexdigest()[:8]
    text_key = f"launch_yaml_{digest}"
    try:  # the widgets start from the shipped file; only the ones the user changes override
        raw = launcher.parse_yaml(text_default, source)
    except ConfigError:
        raw = {}
    with st.form(f"launch_form_{digest}"):
        text = st.text_area("Config YAML (edit freely)", value=text_default, height=320, key=text_key)
        fields = [f for f in schema_fields() if not f[0].startswith("teacher.") or "teacher" in raw]
        defaults: dict[str, Any] = {}
        with st.expander("Settings generated from the config schema (changed ones override the YAML)"):
            columns = st.columns(3)
            for n, (path, kind, default) in enumerate(fields):
                value = _get(raw, path, default)
                with columns[n % 3]:
                    defaults[path] = (value, _widget(path, kind, value, key=f"field_{digest}_{path}"))
        submitted = st.form_submit_button("Launch run", icon=":material/rocket_launch:", type="primary")
    if not submitted:
        return
    overrides = [f"{path}={yaml.safe_dump(new, default_flow_style=True).strip().removesuffix('...').strip()}"
                 for path, (old, new) in defaults.items() if new != old]
    try:
        record = launcher.launch(text, source=source, overrides=overrides, base=base)
    except ConfigError as exc:
        st.error(launcher.cli_error(exc))
        return
    st.session_state["kdw_run"] = record["run_id"]
    st.session_state["kdw_launched"] = record["run_id"]
    st.success(f"Launched run **{record['run_id']}** (pid {record['pid']}); log: `{record['log']}`. "
               "It appears below once its data is built; open **Curves** to watch it train.")
