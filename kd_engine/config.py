"""Experiment configs: one YAML file, validated into typed objects.

Every mistake becomes a one-line `ConfigError` that names the key (``distill.terms.0.weight``)
and, for choices, the allowed values, so users fix a typo without reading a traceback.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from kd_engine.config_edit import (CONFIG_RELATIVE_PATHS, RENAMED_KEYS,  # noqa: F401 (re-exported)
                                   apply_override, rename_deprecated, resolve_relative_paths)
from kd_engine.config_training import BestCheckpointConfig, EMAConfig, WeightSchedule  # noqa: F401 (re-exported)
from kd_engine.config_types import Count, Real, _not_bool, _Strict  # noqa: F401 (re-exported)
from kd_engine.errors import ConfigError
from kd_engine.yaml_load import AliasBudgetExceeded, BudgetLoader, safe_yaml  # noqa: F401 (re-exported)


# Seeds reach NumPy (which takes 0 <= seed < 2**32) and torch generators (64-bit, after the
# per-epoch arithmetic of the data order), so they are kept in NumPy's range.
SEED_LIMIT = 2**32


class DataConfig(_Strict):
    name: str = "digits"
    root: str | None = None
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    split_seed: int | None = Field(None, ge=0, lt=SEED_LIMIT)
    image_size: int | None = Field(None, gt=0)
    batch_size: int = Field(64, gt=0)
    eval_batch_size: int = Field(512, gt=0)
    augment: str = "none"  # a preset in kd_engine.data.augment (none, cifar, imagenet), checked when built
    download: bool = False  # torchvision datasets: fetch into data.root when missing
    params: dict[str, Any] = Field(default_factory=dict)
    loader: LoaderConfig = Field(default_factory=lambda: LoaderConfig())  # streamed splits' DataLoader (below)
    # [fold, folds]: train on the training split without the images whose id mod folds == fold
    # (how a cross-fitted teacher is kept off the images it will score; detection datasets)
    holdout_fold: tuple[int, int] | None = None

    @field_validator("holdout_fold")
    @classmethod
    def _fold_in_range(cls, value):
        if value is not None and not (value[1] >= 2 and 0 <= value[0] < value[1]):
            raise ValueError(f"expected [fold, folds] with folds >= 2 and 0 <= fold < folds, got {list(value)}")
        return value


class LoaderConfig(_Strict):
    """How a streamed split (one too large for memory) is read: `kd_engine.data.loader`. None of
    it changes the batches or the augmentation, only how fast they come."""

    num_workers: Count = Field(0, ge=0, le=256)
    pin_memory: bool = True  # only where the device is a GPU
    persistent_workers: bool = True  # keep the workers between epochs (only with workers)
    prefetch_factor: Count = Field(2, ge=1, le=64)  # batches each worker reads ahead


DataConfig.model_rebuild()  # its `loader` field names LoaderConfig, defined just above


class OptimizerConfig(_Strict):
    name: str = "sgd"  # a name in kd_engine.optim.OPTIMIZERS, checked when it is built
    lr: Real = Field(0.05, gt=0.0)
    momentum: Real = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: Real = Field(5e-4, ge=0.0)
    nesterov: bool = False
    # optimizer-specific, e.g. DOT's delta: checked against the builder's annotated signature
    params: dict[str, Any] = Field(default_factory=dict)


class ScheduleConfig(_Strict):
    name: Literal["constant", "cosine", "step", "multistep"] = "cosine"
    warmup_epochs: Count = Field(0, ge=0)
    warmup_iters: Count = Field(0, ge=0)  # linear warm-up from 0.1x over the first N steps
    step_size: Count = Field(10, gt=0)
    milestones: list[Annotated[Count, Field(ge=0)]] = Field(default_factory=list)  # multistep: x gamma at each
    gamma: Real = Field(0.1, gt=0.0)


class TrainSettings(_Strict):
    """How a model is trained on its own (used for teachers that are not cached yet)."""

    epochs: Count = Field(20, gt=0)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    grad_clip: Real | None = Field(None, gt=0.0)


class ModelSpec(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    init: str | None = None  # student: weights to start from (.safetensors or a .pth/.pt state_dict)
    strict: bool = True  # false: load the tensors of init/checkpoint that fit, report the rest


class TeacherConfig(ModelSpec):
    checkpoint: str | None = None  # weights (.safetensors or a .pth/.pt state_dict); else trained and cached

    @model_validator(mode="after")
    def _checkpoint_not_init(self) -> "TeacherConfig":
        if self.init is not None:
            raise ValueError("a teacher's weights are given by 'checkpoint', not 'init'")
        return self
    train: TrainSettings = Field(default_factory=TrainSettings)
    # the data the teacher trains on, when it is not the run's (e.g. KD from a shifted pool)
    data: DataConfig | None = None
    # K: cross-fitting. K teachers, teacher k trained on the run's training images whose
    # id mod K != k, and each training image scored by the one teacher that never saw it
    cross_fit: int | None = Field(None, ge=2, le=16)

    @model_validator(mode="after")
    def _cross_fit_alone(self) -> "TeacherConfig":
        if self.cross_fit is not None and (self.checkpoint is not None or self.data is not None):
            raise ValueError("cross_fit trains its K teachers on folds of the run's own training "
                             "images: leave out 'checkpoint' and 'data'")
        return self


class TermConfig(_Strict):
    """One distillation term: a registered loss, its weight, and where its inputs come from."""

    loss: str
    weight: Real = Field(1.0, ge=0.0)
    weight_schedule: WeightSchedule | None = None  # None: the weight is constant
    params: dict[str, Any] = Field(default_factory=dict)
    student_layer: str | None = None
    teacher_layer: str | None = None
    adapter: str = "none"  # a name in kd_engine.models.adapters.ADAPTERS, checked before training
    adapter_params: dict[str, Any] = Field(default_factory=dict)  # e.g. a ViT token grid: {grid: [8, 8]}


class DistillConfig(_Strict):
    task_weight: Real = Field(1.0, ge=0.0)
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
    # per-epoch recorders (feature disparity, attention maps): past these a recorder warns once,
    # keeps what it recorded and the run trains on (kd_engine/trainers/evaluate.py RecorderGuard)
    budget_seconds: float = Field(60.0, gt=0.0)
    budget_mb: float = Field(1024.0, gt=0.0)
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
    seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 autocast on CUDA, full precision on the CPU; fp16 adds a gradient scaler
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    epochs: Count = Field(10, gt=0)
    eval_every: Count = Field(1, gt=0)  # epochs between validation passes; the last is evaluated
    grad_clip: Real | None = Field(None, gt=0.0)
    threads: Count | None = Field(None, gt=0)
    # training essentials (docs/training.md): batches per optimizer step, the task cross-entropy's
    # label smoothing, a student EMA, the best-validation checkpoint, and opt-in speed settings
    accumulate_steps: Count = Field(1, gt=0)
    label_smoothing: Real = Field(0.0, ge=0.0, lt=1.0)
    ema: EMAConfig | None = None
    best_checkpoint: BestCheckpointConfig = Field(default_factory=BestCheckpointConfig)
    sync_batchnorm: bool = False  # under DDP (torchrun) on CUDA: BatchNorm statistics over all ranks
    compile: bool = False  # torch.compile the student
    channels_last: bool = False  # the models' 4-D weights (and so their activations) in NHWC
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
        if self.use_teacher_bank and self.data.augment != "none":
            # the bank's soft labels belong to its own stored crops; augmenting the batch on top
            # would pair them with images the teacher never saw
            raise ValueError(f"data.augment: {self.data.augment!r} cannot be combined with use_teacher_bank "
                             "(the bank replays its own crops, set in teacher_bank); use augment: none")
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


def load_raw(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    raw = safe_yaml(text, str(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(raw).__name__}")
    return raw


def validate(raw: dict[str, Any], source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(copy.deepcopy(raw))
    except ValidationError as exc:
        raise _one_line(exc, source) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate a config; names are checked against registries later.

    Relative weight paths in the file resolve against its folder; those given by ``--set``
    overrides stay relative to the working directory, like any path typed on a command line."""
    raw = load_raw(path)
    resolve_relative_paths(raw, Path(path).resolve().parent)
    for assignment in overrides or []:
        apply_override(raw, assignment)
    return validate(raw, str(path))


def stable_hash(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
