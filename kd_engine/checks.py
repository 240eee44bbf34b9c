"""Name checks against every registry, run before anything is built or trained, so a typo in a
model, loss, method, weighting or optimizer name fails at once with the allowed values."""
from __future__ import annotations

from kd_engine.config import ExperimentConfig


def check_names(cfg: ExperimentConfig) -> None:
    from kd_engine.data import DATASETS
    from kd_engine.losses.terms import LOSSES
    from kd_engine.methods import METHODS
    from kd_engine.models import MODELS
    from kd_engine.trainers.optim import OPTIMIZERS
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
        LOSSES.get(term.loss, field=f"distill.terms.{index}.loss")
        ADAPTERS.get(term.adapter, field=f"distill.terms.{index}.adapter")
    if cfg.teacher_cache:  # what a teacher soft-label bank can serve (logit terms, classification)
        from kd_engine.teacher_bank import check_teacher_cache

        check_teacher_cache(cfg)
