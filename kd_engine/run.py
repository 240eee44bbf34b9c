"""Turn a config into a run: the one place that knows how the parts fit together.

`train` validates the config and checks every name, picks the task from the dataset
(`kd_engine.tasks.task_for`), sets up the device and DDP, builds the data, the student and the
method, gets the teacher (from the teacher-checkpoint cache, training it on first use, or a
teacher soft-label bank instead of a teacher), checks what the method needs (a teacher, one
process, its kind of data) and hands everything to `kd_engine.trainer.Trainer`, which
imports none of this.
"""
from __future__ import annotations

from pathlib import Path

import torch

from kd_engine import cache
from kd_engine.checks import check_names
from kd_engine.config import ExperimentConfig, load_raw, validate
from kd_engine.errors import ConfigError
from kd_engine.models import build_model
from kd_engine.weights import load_init
from kd_engine.tasks import TASKS, task_for
from kd_engine.teacher_bank import bank_distiller, prepare_bank
from kd_engine.trainers import runtime
from kd_engine.trainer import Trainer


def build_teacher(cfg: ExperimentConfig, input_shape, num_classes: int, is_main: bool = True,
                  barrier=lambda: None):
    """The frozen teacher and where its weights came from (`kd_engine.cache.build_teacher`),
    training it as an ordinary scratch run when the cache lacks it."""
    return cache.build_teacher(cfg, input_shape, num_classes, is_main, barrier,
                               train_teacher=lambda teacher_cfg: train(teacher_cfg, distributed=False))


def check_method(method, cfg: ExperimentConfig, ctx, registry=None) -> None:
    """What a method declares about itself, enforced once for every method."""
    if cfg.label_smoothing and not method.smooths_labels:
        takers = [n for n in registry.names() if registry.get(n).smooths_labels] if registry else []
        raise ConfigError(f"label_smoothing: method {cfg.method} builds its own task loss, which takes no label "
                          f"smoothing here (methods that do: {', '.join(takers)})")
    if method.requires_teacher(cfg) and cfg.teacher is None:
        raise ConfigError(f"teacher: method {cfg.method} distils from a teacher; add a teacher section")
    if method.single_process and ctx.enabled:
        raise ConfigError(f"method: {cfg.method} runs in one process here; run it without torchrun")


def check_cross_fit(cfg: ExperimentConfig, task_class) -> None:
    """Cross-fitting routes images to fold teachers by id: only tasks that declare it."""
    folds = [f for f, on in (("teacher.cross_fit", cfg.teacher is not None and cfg.teacher.cross_fit),
                             ("data.holdout_fold", cfg.data.holdout_fold is not None)) if on]
    if folds and not task_class.cross_fit:
        takers = [n for n in TASKS.names() if TASKS.get(n).cross_fit]
        raise ConfigError(f"{folds[0]}: the {task_class.name} task has no cross-fitted teachers "
                          f"(tasks that do: {', '.join(takers)})")
    if cfg.teacher is not None and cfg.teacher.cross_fit and cfg.use_teacher_bank:
        raise ConfigError("teacher.cross_fit: a teacher bank labels crops with one teacher; "
                          "set use_teacher_bank: false")


def train(cfg: ExperimentConfig | None, resume: str | Path | None = None, distributed: bool = True,
          run_id: str | None = None) -> Path:
    """Run one experiment (or continue `resume`, a run directory) and return its directory."""
    if resume is not None:
        cfg = validate(load_raw(Path(resume) / "config.yaml"), str(Path(resume) / "config.yaml"))
    check_names(cfg)
    task_class = task_for(cfg.data.name)
    check_cross_fit(cfg, task_class)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = runtime.SINGLE
    device = runtime.resolve_device(cfg.device)
    if distributed:
        ctx = runtime.init_distributed(device)
        device = runtime.resolve_device(cfg.device, ctx.local_rank)
    runtime.seed_everything(cfg.seed)
    data = task_class.build_data(cfg)
    student = load_init(build_model(cfg.student, data.input_shape, data.num_classes, field="student"), cfg.student)
    method = task_class.methods.get(cfg.method, field="method")
    check_method(method, cfg, ctx, task_class.methods)
    if cfg.teacher is not None:  # report mistakes in terms, layers or weighting before a teacher trains
        method(cfg, student, build_model(cfg.teacher, data.input_shape, data.num_classes, field="teacher"),
               data.input_shape)
    task = task_class(cfg, data, device, ctx, lambda: runtime.autocast(device, cfg.amp))
    if cfg.use_teacher_bank:  # the teacher's soft labels come from a bank; the teacher is not loaded
        bank = prepare_bank(cfg, data, device, lambda: build_teacher(cfg, data.input_shape, data.num_classes),
                            ctx.is_main, ctx.barrier)
        distiller, teacher_source = bank_distiller(cfg, method, student, data, bank).to(device), str(bank.directory)
    else:
        teacher, teacher_source = build_teacher(cfg, data.input_shape, data.num_classes, ctx.is_main, ctx.barrier)
        torch.manual_seed(cfg.seed + 1)  # adapters get the same init whether or not a teacher was cached
        distiller = method(cfg, student, teacher, data.input_shape).to(device)
    distiller.check_data(data)
    return Trainer(cfg, task, distiller, teacher_source, resume, run_id).run()
