"""Name checks against every registry, run before anything is built or trained, so a typo in a
model, loss, method, weighting or optimizer name fails at once with the allowed values; the
values of loss, weighting and optimizer params are checked here too (kd_engine.params)."""
from __future__ import annotations

from kd_engine.config import ExperimentConfig
from kd_engine.errors import ConfigError
from kd_engine.params import check_call


def check_names(cfg: ExperimentConfig) -> None:
    from kd_engine.data import DATASETS
    from kd_engine.losses.terms import LOSSES
    from kd_engine.methods import METHODS
    from kd_engine.models import MODELS
    from kd_engine.optim import OPTIMIZERS
    from kd_engine.weighting import WEIGHTINGS

    DATASETS.get(cfg.data.name, field="data.name")
    MODELS.get(cfg.student.name, field="student.name")
    if cfg.teacher is not None:
        MODELS.get(cfg.teacher.name, field="teacher.name")
        OPTIMIZERS.get(cfg.teacher.train.optimizer.name, field="teacher.train.optimizer.name")
    METHODS.get(cfg.method, field="method")
    WEIGHTINGS.get(cfg.weighting.strategy, field="weighting.strategy")
    OPTIMIZERS.get(cfg.optimizer.name, field="optimizer.name")
    from kd_engine.models.adapters import ADAPTERS

    for index, term in enumerate(cfg.distill.terms):
        LOSSES.get(term.loss, field=f"distill.terms.{index}.loss").check_params(
            term.params, f"distill.terms.{index}.params")
        ADAPTERS.get(term.adapter, field=f"distill.terms.{index}.adapter")
    strategy = WEIGHTINGS.get(cfg.weighting.strategy)
    task = getattr(DATASETS.get(cfg.data.name), "task", "classification")
    allowed = [n for n in WEIGHTINGS.names() if task in WEIGHTINGS.get(n).tasks]
    # a task that is weighted at all (anomaly and generation runs are not) refuses a strategy it
    # cannot use before its params are judged: the params of a wrong strategy are beside the point
    if allowed and task not in strategy.tasks:
        raise ConfigError(f"weighting.strategy: {cfg.weighting.strategy!r} does not weight {task} runs "
                          f"(allowed: {', '.join(allowed)})")
    check_call(strategy, cfg.weighting.params, "weighting.params", owner=f"strategy {cfg.weighting.strategy}")
    optimizers = [("optimizer", cfg.optimizer)]
    if cfg.teacher is not None:
        optimizers.append(("teacher.train.optimizer", cfg.teacher.train.optimizer))
    for field, optimizer in optimizers:  # a builder takes (parameters, cfg) before its own params
        check_call(OPTIMIZERS.get(optimizer.name), optimizer.params, f"{field}.params", skip=2,
                   owner=f"optimizer {optimizer.name}")
    check_teacher_bank(cfg)


def check_teacher_bank(cfg: ExperimentConfig) -> None:
    """One-line ConfigError when `use_teacher_bank: true` cannot serve this config."""
    from kd_engine.data.detection.builders import dataset_task
    from kd_engine.losses.terms import LOSSES
    from kd_engine.methods import METHODS

    if not cfg.use_teacher_bank:
        return
    task = dataset_task(cfg.data.name)
    if task != "classification":  # the bank stores one logit vector per crop of an image
        raise ConfigError(f"use_teacher_bank: {task} runs ({cfg.data.name}) have no crop bank; "
                          "set use_teacher_bank: false")
    if METHODS.get(cfg.method, field="method").bank_mode is None:
        allowed = sorted(n for n in METHODS.names() if METHODS.get(n).bank_mode is not None)
        raise ConfigError(f"use_teacher_bank: method {cfg.method!r} does not read a teacher bank "
                          f"(methods that do: {', '.join(allowed)})")
    for index, term in enumerate(cfg.distill.terms):
        if LOSSES.get(term.loss, field=f"distill.terms.{index}.loss").uses_layers:
            raise ConfigError(f"distill.terms.{index}.loss: the teacher bank stores logits only, "
                              f"so {term.loss!r} (a feature term) cannot use it; set use_teacher_bank: false")
