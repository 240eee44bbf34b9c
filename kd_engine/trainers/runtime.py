"""Where and how a run executes: device, precision, seeds, and the torchrun/DDP context."""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from kd_engine.data.loader import epoch_generator  # noqa: F401 (the data order lives with the loaders)
from kd_engine.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


SINGLE = DistContext()


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group torchrun set up (gloo on CPU, NCCL on GPU); single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but no CUDA device is available (use auto or cpu)")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _check_amp(device: torch.device, amp: str) -> None:
    if amp in ("bf16", "fp16") and device.type != "cuda":
        raise ConfigError(f"amp: {amp} needs a CUDA device here (use auto or off)")


def autocast(device: torch.device, amp: str):
    """bf16 autocast on CUDA (the default there), fp16 autocast when asked (with a gradient
    scaler, `grad_scaler`); full precision on the CPU."""
    _check_amp(device, amp)
    if device.type == "cuda" and amp in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if amp == "fp16":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler | None:
    """fp16's gradient scaler (fp16 gradients underflow without it); None for bf16 and fp32,
    whose exponent range needs none."""
    _check_amp(device, amp)
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


