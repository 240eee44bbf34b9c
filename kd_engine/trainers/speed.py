"""Opt-in settings that change how fast the models run, not what they compute (up to float
rounding): ``channels_last``, ``sync_batchnorm`` under DDP, and ``compile``. Old configs leave
them off and train exactly as before."""
from __future__ import annotations

import logging

import torch
from torch import nn

from kd_engine.errors import ConfigError

# The backend `compile: true` hands to torch.compile. Tests use "eager" (no code generation) to
# check the wiring quickly on the CPU.
COMPILE_BACKEND = "inductor"

log = logging.getLogger("kdw")


def prepare_models(distiller: nn.Module, cfg, distributed: bool, device: torch.device) -> None:
    """In place, before the optimizer state, the EMA copy and the DDP wrapper exist:
    ``channels_last`` puts every 4-D weight (so the convolutions' activations) in NHWC order, and
    ``sync_batchnorm`` turns BatchNorm into SyncBatchNorm, so that under DDP batch statistics
    cover the global batch instead of each rank's share. Parameters stay the same objects.

    ``channels_last`` applies on CUDA, where tensor cores want NHWC. On the CPU it is left off
    with a warning: with torch 2.14.1 oneDNN's weight gradient of a 1x1 stride-2 convolution in
    NHWC (a ResNet shortcut) corrupts the heap on an AVX2 AMD EPYC and kills the process, and its
    CPU gain measured here was 0-7 %."""
    if cfg.channels_last and device.type == "cuda":
        distiller.to(memory_format=torch.channels_last)
    elif cfg.channels_last:
        log.warning("channels_last: left off on the %s (it is for CUDA; oneDNN's NHWC convolution "
                    "backward crashes on some CPUs); the run trains in the default layout", device.type)
    if cfg.sync_batchnorm and distributed:
        if device.type != "cuda":
            raise ConfigError("sync_batchnorm: SyncBatchNorm runs on CUDA (NCCL) only; turn it off on the CPU")
        nn.SyncBatchNorm.convert_sync_batchnorm(distiller)  # replaces the BatchNorm children in place


def compile_student(student: nn.Module, enabled: bool, backend: str | None = None) -> None:
    """``compile: true``: torch.compile the student in place (`nn.Module.compile`), so its state
    dict keys, hooks and the optimizer's parameters are unchanged. The first steps are slow while
    graphs are built; it pays off on long GPU runs."""
    if enabled:
        student.compile(backend=backend or COMPILE_BACKEND)
