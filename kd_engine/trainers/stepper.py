"""The optimizer step of the trainer, beyond one backward and one step: gradient accumulation,
the fp16 gradient scaler and the student EMA.

* **Accumulation** (``accumulate_steps: k``): each batch's loss is divided by ``k`` and its
  gradients add up; every ``k`` batches the optimizer steps once. The trainer checks each batch's
  loss before its backward, so a non-finite loss is refused before any weight changes. A partial
  group at the end of an epoch steps too, with its gradients rescaled to a mean over the batches
  it has (a checkpoint never holds pending gradients, so a resume is exact). Warm-up and any
  per-step schedule count optimizer steps (`optimizer_steps`), not batches; per-step scalars and
  per-instance rows are still written per batch.
* **fp16** (``amp: fp16``): a `torch.amp.GradScaler` multiplies the loss before backward and
  unscales the gradients before clipping; a step whose gradients hold inf/NaN is skipped by the
  scaler and counted (``amp/skipped_steps``, beside ``amp/scale``). bf16 needs no scaler.
* **EMA** (``ema: {decay: d}``): after each optimizer step that was taken, θ_ema ← d·θ_ema +
  (1 − d)·θ (`kd_engine.parts.ema.EMATeacher`, handed in by the trainer). `evaluated` swaps the
  EMA weights into the student for evaluation and for the exported checkpoint, and back after.

The scaler's and the EMA's state, and the optimizer-step count, are part of the resume state.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch
from torch import nn

from kd_engine.errors import ConfigError, NonFiniteLossError
from kd_engine.store import checkpoint_note
from kd_engine.trainers.runtime import grad_scaler
from kd_engine.trainers.speed import compile_student, prepare_models


class Stepper:
    """Accumulates gradients over ``accumulate`` batches and steps ``optimizer`` through
    ``scaler`` (None: no scaling); ``ema`` (an object with ``update(student)``, ``module``,
    ``state_dict`` and ``load_state_dict``) trails ``student`` when given."""

    def __init__(self, optimizer: torch.optim.Optimizer, accumulate: int = 1,
                 scaler: torch.amp.GradScaler | None = None, ema=None, student: nn.Module | None = None):
        if accumulate < 1:
            raise ValueError(f"accumulate must be >= 1, got {accumulate}")
        self.optimizer, self.accumulate, self.scaler = optimizer, int(accumulate), scaler
        self.ema, self.student = ema, student
        self.pending = 0  # batches whose gradients wait for the next optimizer step
        self.optimizer_steps = 0
        self.skipped = 0  # fp16 steps the scaler skipped (inf/NaN gradients)

    # -- one batch ------------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor, run: Callable[[torch.Tensor], None] | None = None) -> None:
        """This batch's share: gradients are zeroed at the first batch of a group, the loss is
        divided by the group size (mean over its batches) and scaled when fp16 is on. ``run``
        replaces ``loss.backward()`` for an optimizer with its own backward passes (DOT's)."""
        if self.pending == 0:
            self.optimizer.zero_grad(set_to_none=True)
        if self.accumulate > 1:
            loss = loss / self.accumulate
        scaled = self.scaler.scale(loss) if self.scaler is not None else loss
        scaled.backward() if run is None else run(scaled)
        self.pending += 1

    def due(self) -> bool:
        """Whether the group is complete and the optimizer should step now."""
        return self.pending >= self.accumulate

    def step(self, clip: Callable[[], None], warmup: Callable[[int], None]) -> bool:
        """Unscale (fp16), rescale a partial group, clip, warm up at `optimizer_steps`, step,
        update the EMA. Returns False when the scaler skipped the step."""
        if self.pending == 0:
            return False
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.pending < self.accumulate:  # an epoch's last, partial group: a mean over what it has
            factor = self.accumulate / self.pending
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.mul_(factor)
        clip()
        warmup(self.optimizer_steps)
        taken = True
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            taken = self.scaler.get_scale() >= scale  # the scale drops exactly when a step is skipped
            self.skipped += 0 if taken else 1
        else:
            self.optimizer.step()
        self.pending = 0
        self.optimizer_steps += 1
        if taken and self.ema is not None:
            self.ema.update(self.student)
        return taken

    def scalars(self, device: torch.device) -> dict[str, torch.Tensor]:
        """Per-step scalars of the scaler (none without fp16)."""
        if self.scaler is None:
            return {}
        return {"amp/scale": torch.tensor(float(self.scaler.get_scale()), device=device),
                "amp/skipped_steps": torch.tensor(float(self.skipped), device=device)}

    # -- evaluation -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def evaluated(self) -> Iterator[dict]:
        """The weights evaluated and exported: inside, the student holds the EMA weights when an
        EMA is on, else its own; its own come back on exit, whatever happens. Yields what a
        checkpoint's metadata says of them ({"weights": "ema"}, or {} for the student's own)."""
        if self.ema is None:
            yield {}
            return
        with swapped_in(self.student, self.ema.module):
            yield {"weights": "ema"}

    # -- resume ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state: dict = {"optimizer_steps": self.optimizer_steps}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
            state["skipped_steps"] = self.skipped
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict, default_steps: int) -> None:
        """Restore from a resume state; ``default_steps`` (the batch count) stands in for the
        optimizer-step count of a state written before accumulation existed (one step a batch)."""
        self.optimizer_steps = int(state.get("optimizer_steps", default_steps))
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
            self.skipped = int(state.get("skipped_steps", 0))
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])


@contextlib.contextmanager
def swapped_in(target: nn.Module, source: nn.Module) -> Iterator[None]:
    """``target`` holds ``source``'s parameters and buffers (matched by name) inside the block,
    its own again after it. Values are copied, so the optimizer keeps its parameter objects."""
    tensors = dict(target.named_parameters())
    tensors.update(dict(target.named_buffers()))
    incoming = dict(source.named_parameters())
    incoming.update(dict(source.named_buffers()))
    saved = {name: t.detach().clone() for name, t in tensors.items()}
    try:
        with torch.no_grad():
            for name, t in tensors.items():
                t.copy_(incoming[name])
        yield
    finally:
        with torch.no_grad():
            for name, t in tensors.items():
                t.copy_(saved[name])


def build_stepper(cfg, optimizer: torch.optim.Optimizer, device: torch.device, distiller: nn.Module,
                  split_streams: bool, distributed: bool, make_ema: Callable[[nn.Module, float], object]) -> Stepper:
    """The trainer's stepper for ``cfg`` (``accumulate_steps``, ``amp``, ``ema``, ``compile``),
    after the models are prepared (``channels_last``, ``sync_batchnorm``; before DDP wraps them).
    The EMA copy is made before the student is compiled, so it is a plain module. An optimizer
    with two backward passes a step (``split_streams``, DOT's) takes none of DDP, grad_clip,
    accumulation or fp16 here."""
    prepare_models(distiller, cfg, distributed, device)
    student = distiller.student
    scaler = grad_scaler(device, cfg.amp)
    if split_streams and (distributed or cfg.grad_clip or cfg.accumulate_steps > 1 or scaler is not None):
        raise ConfigError(f"optimizer.name: {cfg.optimizer.name} takes two backward passes a step, which DDP, "
                          "grad_clip, accumulate_steps > 1 and amp: fp16 do not support here")
    ema = make_ema(student, cfg.ema.decay) if cfg.ema is not None else None
    if ema is not None:
        ema.module.eval()  # it is evaluated or swapped in, never trained
    compile_student(student, cfg.compile)
    return Stepper(optimizer, cfg.accumulate_steps, scaler, ema, student)


def check_finite(out, total: torch.Tensor, where: str, run_dir) -> None:
    """Refuse a non-finite loss (``total``, the step's ``out.total``, naming the losses of ``out``
    at fault) before it touches the gradients, so no weight ever changes because of it."""
    if not math.isfinite(float(total.detach())):  # one number read: cheaper than a tensor op per step
        bad = [k for k, v in out.losses.items() if not torch.isfinite(v)]
        raise NonFiniteLossError(f"non-finite loss ({', '.join(bad) or 'total'}) at {where}; "
                                 f"{checkpoint_note(run_dir)}")
