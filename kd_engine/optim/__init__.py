"""Optimizers (a registry, so a method can add its own) and per-epoch learning-rate schedules
(linear warm-up, then constant, cosine or step)."""
from __future__ import annotations

import math

import torch

from kd_engine.config import OptimizerConfig, ScheduleConfig
from kd_engine.optim import dot  # noqa: F401  (registers "dot")
from kd_engine.optim.registry import OPTIMIZERS
from kd_engine.registry import construct


@OPTIMIZERS.register("sgd")
def _sgd(parameters, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameters, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov and cfg.momentum > 0)


@OPTIMIZERS.register("adam")
def _adam(parameters, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(parameters, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_optimizer(cfg: OptimizerConfig, parameters) -> torch.optim.Optimizer:
    builder = OPTIMIZERS.get(cfg.name, field="optimizer.name")
    return construct(builder, cfg.params, "optimizer.params", list(parameters), cfg)


def lr_factor(cfg: ScheduleConfig, epoch: int, epochs: int) -> float:
    """The multiplier of the base learning rate during `epoch` (0-based)."""
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return (epoch + 1) / (cfg.warmup_epochs + 1)
    if cfg.name == "cosine":
        span = max(1, epochs - cfg.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))
    if cfg.name == "step":
        return cfg.gamma ** ((epoch - cfg.warmup_epochs) // cfg.step_size)
    if cfg.name == "multistep":
        return cfg.gamma ** sum(1 for milestone in cfg.milestones if epoch >= milestone)
    return 1.0


def apply_warmup(optimizer: torch.optim.Optimizer, scheduler, warmup_iters: int, step: int) -> None:
    """Per-step linear warm-up from 0.1x to the epoch schedule's rate over ``warmup_iters`` steps
    (detection recipes warm up by iterations); a no-op once it is over."""
    if not warmup_iters or step > warmup_iters:
        return
    factor = 0.1 + 0.9 * min(step, warmup_iters) / warmup_iters
    for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
        group["lr"] = lr * factor


def build_scheduler(cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, epochs: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(cfg, epoch, epochs))
