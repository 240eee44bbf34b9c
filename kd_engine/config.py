"""Experiment configs: one YAML file, validated into typed objects.

Every mistake becomes a one-line `ConfigError` that names the key (``distill.terms.0.weight``)
and, for choices, the allowed values, so users fix a typo without reading a traceback.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kd_engine.errors import ConfigError

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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    name: str = "digits"
    root: str | None = None
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    split_seed: int | None = None
    image_size: int | None = Field(None, gt=0)
    batch_size: int = Field(64, gt=0)
    eval_batch_size: int = Field(512, gt=0)
    params: dict[str, Any] = Field(default_factory=dict)


class OptimizerConfig(_Strict):
    name: str = "sgd"  # a name in kd_engine.optim.OPTIMIZERS, checked when it is built
    lr: float = Field(0.05, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    nesterov: bool = False
    params: dict[str, Any] = Field(default_factory=dict)  # optimizer-specific, e.g. DOT's delta


class ScheduleConfig(_Strict):
    name: Literal["constant", "cosine", "step", "multistep"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    warmup_iters: int = Field(0, ge=0)  # linear warm-up from 0.1x over the first N steps
    step_size: int = Field(10, gt=0)
    milestones: list[int] = Field(default_factory=list)  # multistep: multiply by gamma at each
    gamma: float = Field(0.1, gt=0.0)


class TrainSettings(_Strict):
    """How a model is trained on its own (used for teachers that are not cached yet)."""

    epochs: int = Field(20, gt=0)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    seed: int = 0
    grad_clip: float | None = Field(None, gt=0.0)


class ModelSpec(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class TeacherConfig(ModelSpec):
    checkpoint: str | None = None
    train: TrainSettings = Field(default_factory=TrainSettings)
    # the data the teacher trains on, when it is not the run's (e.g. KD from a shifted pool)
    data: DataConfig | None = None


class TermConfig(_Strict):
    """One distillation term: a registered loss, its weight, and where its inputs come from."""

    loss: str
    weight: float = Field(1.0, ge=0.0)
    params: dict[str, Any] = Field(default_factory=dict)
    student_layer: str | None = None
    teacher_layer: str | None = None
    adapter: Literal["none", "linear", "conv1x1"] = "none"


class DistillConfig(_Strict):
    task_weight: float = Field(1.0, ge=0.0)
    terms: list[TermConfig] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)  # method settings, e.g. zhang_ma's


class WeightingConfig(_Strict):
    strategy: str = "uniform"
    params: dict[str, Any] = Field(default_factory=dict)


class FeaturePair(_Strict):
    student: str
    teacher: str


class RecordConfig(_Strict):
    instances: bool = True
    eval_instances: bool = True
    features: list[FeaturePair] = Field(default_factory=list)
    feature_probe_size: int = Field(256, gt=1)
    attention_maps: int = Field(16, ge=0)
    scalars_every: int = Field(1, gt=0)
    tensorboard: bool = True
    # every N steps, grad_norm/<loss>: the L2 norm of each named loss's gradient with respect to
    # the student's trainable parameters (one extra backward pass per loss; 0 = off)
    grad_norms_every: int = Field(0, ge=0)


class SearchConfig(_Strict):
    """A search over runs of this config (kd_engine.search): each trial is a normal run."""

    strategy: str = "mcts"  # a name in kd_engine.search.STRATEGIES, checked when the search starts
    budget: int = Field(40, gt=0)  # evaluations (trials) in all
    seed: int = 0
    id: str | None = None  # the search directory's name under <runs_dir>/_searches (default: name)
    space: dict[str, Any] = Field(default_factory=dict)  # strategy-specific search space
    params: dict[str, Any] = Field(default_factory=dict)  # strategy settings, e.g. MCTS's c

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(ch in value for ch in "/\\") or value.startswith(".")):
            raise ValueError("must be a plain name without slashes")
        return value


class TeacherBankConfig(_Strict):
    """The views of `use_teacher_bank: true` (kd_engine/teacher_bank.py): K random-resized crops
    (+ flip) per training image, labelled once by the teacher and replayed exactly."""

    views: int = Field(32, gt=0)
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    flip: float = Field(0.5, ge=0.0, le=1.0)
    seed: int | None = None  # None: the split seed
    topk: int | None = Field(None, gt=0)  # quantised labels: keep the top-k probabilities (read time)
    batch_size: int = Field(1024, gt=0)  # teacher batch while the bank is built (not part of its key)
    # Read time, not part of the key: when every stored crop of the training images fits in this
    # many MB they are cut once at the start and a step only indexes them (0: crop every batch).
    replay_memory_mb: float = Field(256.0, ge=0.0)

    @field_validator("scale", "ratio")
    @classmethod
    def _ordered(cls, value: tuple[float, float], info) -> tuple[float, float]:
        high = 1.0 if info.field_name == "scale" else float("inf")
        if not 0.0 < value[0] <= value[1] <= high:
            raise ValueError(f"expected 0 < low <= high{' <= 1' if high == 1.0 else ''}")
        return value


class ExperimentConfig(_Strict):
    name: str = "experiment"
    method: str = "standard"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "off", "bf16"] = "auto"
    epochs: int = Field(10, gt=0)
    eval_every: int = Field(1, gt=0)  # epochs between validation passes; the last is evaluated
    grad_clip: float | None = Field(None, gt=0.0)
    threads: int | None = Field(None, gt=0)
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig | None = None
    student: ModelSpec
    distill: DistillConfig = Field(default_factory=DistillConfig)
    weighting: WeightingConfig = Field(default_factory=WeightingConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    record: RecordConfig = Field(default_factory=RecordConfig)
    # student epochs read the teacher soft-label bank (kd_engine/teacher_bank.py), not a teacher;
    # formerly `teacher_cache`
    use_teacher_bank: bool = False
    teacher_bank: TeacherBankConfig | None = None  # the bank's views (None: the defaults)
    runs_dir: str = "runs"
    cache_dir: str = ".kdw_cache"
    search: SearchConfig | None = None  # present: `kdw train` runs a search of trials of this config
    tags: dict[str, Any] = Field(default_factory=dict)  # free labels, e.g. a search trial's id and number

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not value or any(ch in value for ch in "/\\") or value.startswith("."):
            raise ValueError("must be a plain name without slashes")
        return value

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return rename_deprecated(data)

    @model_validator(mode="after")
    def _teacher_when_distilling(self) -> "ExperimentConfig":
        if self.distill.terms and self.teacher is None:
            raise ValueError("distill.terms need a teacher: add a 'teacher' section")
        if self.use_teacher_bank and self.teacher is None:
            raise ValueError("use_teacher_bank needs a teacher to label the bank: add a 'teacher' section")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _format_loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not str(p).startswith("function-")]
    return ".".join(parts) or "<root>"


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Walk the schema along `loc` to list the keys allowed where an unknown key appeared."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        current = _first_model(annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def _one_line(error: ValidationError, source: str) -> ConfigError:
    first = error.errors()[0]
    loc = tuple(first["loc"])
    key = _format_loc(loc)
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(ExperimentConfig, loc)
        message = f"unknown key {key!r}"
        if allowed:
            message += f" (allowed: {', '.join(allowed)})"
    elif first["type"] == "literal_error":
        message = f"{key}: {first['msg'].lower()}, got {first['input']!r}"
    elif first["type"] == "missing":
        message = f"{key}: required key is missing"
    else:
        message = f"{key}: {first['msg']}"
        if "input" in first and not isinstance(first["input"], (dict, list)):
            message += f", got {first['input']!r}"
    more = len(error.errors()) - 1
    suffix = f" (+{more} more)" if more > 0 else ""
    return ConfigError(f"{source}: {message}{suffix}")


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` to a raw config dict; the value is parsed as YAML (safely)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value")
    key, value_text = assignment.split("=", 1)
    try:
        value = yaml.safe_load(value_text) if value_text else None
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


def load_raw(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(raw).__name__}")
    return raw


def validate(raw: dict[str, Any], source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(copy.deepcopy(raw))
    except ValidationError as exc:
        raise _one_line(exc, source) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate a config; names are checked against registries later."""
    raw = load_raw(path)
    for assignment in overrides or []:
        apply_override(raw, assignment)
    return validate(raw, str(path))


def stable_hash(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
