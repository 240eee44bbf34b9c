"""The training loop of `kd_engine.trainer.Trainer`, as one resumable iterator over the run.

A run is a sequence of events: the method's phases, then, per epoch, one event per optimisation
step and one at the end of the epoch (validation, feature recording, checkpoint), then the final
evaluation. `Trainer.fit` advances that sequence by a number of steps or epochs and returns, so a
run can be driven one call at a time from another loop, a notebook or a benchmark, and the next
call continues exactly where the last one stopped (mid-epoch included: the epoch's batch order,
pending rows and scalars are kept in the suspended iterator). `Trainer.run` is ``fit()`` to the
end, which is what `kdw train` does, so both paths execute the same statements in the same order.
"""
from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Iterator

import torch

from kd_engine.errors import ConfigError, KDWError
from kd_engine.trainers.probes import grad_norms

# Training rows go to the store's writer thread every this many steps, so that their insert
# overlaps the next steps instead of waiting for the epoch's end (kd_engine.store.sink). Each
# chunk costs the writer thread ~1.7 ms of fixed work (a merge's tensor calls, a transaction, a
# hand-over), much of it holding the GIL: on the digits bench, 8-step chunks cost it 0.50 ms a
# step and the training thread ~1.2 GIL waits a step, 32-step chunks 0.32 ms and ~0.1. The rows
# keep the steps' logits until the merge: 32 steps of (batch, classes) per model, e.g. 32 MB
# each for ImageNet at batch 256.
INSTANCE_CHUNK_STEPS = 32


class StopRequested(KDWError):
    """SIGTERM (e.g. the dashboard's Stop button) arrived; the last epoch checkpoint stands."""


def _raise_stop(signum, frame):
    raise StopRequested("stopped by request (SIGTERM)")


class StepLoop:
    """`fit`/`run` and the epoch iterator; mixed into `Trainer`, which provides the step
    (`_optimize`), the phases (`_run_phase`), the recording and the end-of-epoch work."""

    _progress: Iterator[tuple[str, object]] | None = None  # the suspended run, between fit calls
    _ended = False  # the run finished, failed or stopped: fit has nothing left to do
    _epoch_ending = False  # the step just yielded was the last of its epoch

    @property
    def finished(self) -> bool:
        return self._ended

    def run(self) -> Path:
        """Train to the end (all phases and epochs, the final evaluation); the run directory."""
        self.fit()
        return self.run_dir

    def fit(self, steps: int | None = None, epochs: int | None = None) -> list[torch.Tensor]:
        """Continue the run by ``steps`` optimisation steps or ``epochs`` epochs (both None: to the
        end) and return the detached total loss of each step taken.

        When the last step taken ends an epoch, that epoch's validation and checkpoint run before
        returning (and, after the last epoch, the final evaluation), so ``fit(steps=k)`` with k a
        multiple of the steps per epoch leaves the same store as ``fit(epochs=...)``. With
        ``epochs``, an epoch begun by an earlier ``fit(steps=...)`` counts as one. Once the run has
        ended, fit returns an empty list.
        """
        for name, value in (("steps", steps), ("epochs", epochs)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"fit: {name} must be a positive integer or None, got {value!r}")
        if self._ended:
            return []
        if self._progress is None:
            self._progress = self._events()
        elif not self._epoch_ending:  # mid-epoch: the caller may have evaluated the model in between
            self.model.train()  # (at an epoch's boundary the next epoch's first step sets it)
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_stop) if self.ctx.is_main and main_thread else None
        losses: list[torch.Tensor] = []
        done_epochs = 0
        try:
            for kind, value in self._progress:
                if kind == "step":
                    losses.append(value)
                    if steps is not None and len(losses) >= steps and not self._epoch_ending:
                        break
                    continue
                done_epochs += 1
                if (steps is not None and len(losses) >= steps) or (epochs is not None and done_epochs >= epochs):
                    break
            else:
                self._progress, self._ended = None, True
                if self.writer is not None:
                    self.writer.close()
        except BaseException as exc:
            self._progress, self._ended = None, True
            self._give_up(exc)
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return losses

    def close(self) -> None:
        """End a run that will not be continued: it is recorded as stopped (its last epoch's
        checkpoint stands) and its store closed. Nothing happens to a run that has ended."""
        if self._ended:
            return
        if self._progress is not None:
            self._progress.close()
        self._progress, self._ended = None, True
        self._give_up(StopRequested("stopped by the caller before the end"))

    def train_epoch(self, epoch: int) -> int:
        """Train one epoch's steps at once, without its end (validation, checkpoint, scheduler),
        wait until its records are committed, and return how many steps it took: what `make
        bench` times as one sample."""
        steps = sum(1 for _ in self._train_epoch(epoch))
        if self.writer is not None:
            self.writer.flush()
        return steps

    def _events(self) -> Iterator[tuple[str, object]]:
        """The whole run: ``("step", loss)`` per optimisation step, ``("epoch", e)`` after each
        epoch's end-of-epoch work except the last, whose end is the final evaluation."""
        for phase in self.distiller.phases(self.task) if self.start_epoch == 0 else ():
            self._run_phase(phase)
        for epoch in range(self.start_epoch, self.cfg.epochs):
            for loss in self._train_epoch(epoch):
                yield "step", loss
            self.scheduler.step()  # on every rank: DDP replicas must share the learning rate
            if self.ctx.is_main:
                self._end_of_epoch(epoch)
            self.ctx.barrier()
            if epoch + 1 < self.cfg.epochs:
                yield "epoch", epoch
        if self.ctx.is_main:
            self._finish()

    def _train_epoch(self, epoch: int) -> Iterator[torch.Tensor]:
        """One epoch's steps, yielding each step's loss. The next batch is drawn before the yield,
        after all of the step's work, so random numbers are drawn in the same order as in a plain
        loop, and `_epoch_ending` tells `fit` whether the epoch's end comes next."""
        self.model.train()
        self.distiller.begin_epoch(epoch, self.cfg.epochs)
        rows: list[dict] = []
        pending: list[tuple[int, tuple]] = []  # (step, Trainer._step_scalars)
        started, seen, last_flush, paused = time.perf_counter(), 0, time.perf_counter(), 0.0
        batches = iter(self.task.batches(epoch, self.distiller.wants_ids))
        batch = next(batches, None)
        while batch is not None:
            with self.autocast():
                out = self.model(*batch.inputs, **batch.kwargs)
            every = self.cfg.record.grad_norms_every
            if every and self.ctx.is_main and self.global_step % every == 0:
                params = [p for p in self.student.parameters() if p.requires_grad]
                self.writer.log_scalars(self.global_step, epoch, grad_norms(out.losses, params))
            loss = self._optimize(out, epoch)
            if self.cfg.record.instances:
                batch_rows = self.task.train_rows(out, batch, self.global_step, epoch)
                if batch_rows is not None:
                    rows.append(batch_rows)
                    if len(rows) >= INSTANCE_CHUNK_STEPS and not self.ctx.enabled:
                        self._queue_instances(rows)  # written on the store's thread while training goes on
                        rows = []
            if self.ctx.is_main and self.global_step % self.cfg.record.scalars_every == 0:
                pending.append((self.global_step, self._step_scalars(out, loss)))
            seen += batch.size
            self.global_step += 1
            if self.ctx.is_main and time.perf_counter() - last_flush > 1.0:
                self._flush_scalars(pending, epoch)
                last_flush = time.perf_counter()
            batch = next(batches, None)
            self._epoch_ending = batch is None
            suspended = time.perf_counter()
            yield loss.detach()
            paused += time.perf_counter() - suspended  # time spent outside, between fit calls
        if self.steps.pending:  # an accumulation group cut short by the epoch's end steps now
            self._step(epoch, self.global_step - 1)
        if self.ctx.is_main:  # before the last rows: their merge on the writer thread would contend for the GIL
            self._flush_scalars(pending, epoch)
        self._write_instances(rows)  # the rest (the epoch's end waits for all of them)
        if self.ctx.is_main:
            elapsed = time.perf_counter() - started - paused
            self.writer.log_scalars(self.global_step, epoch, {
                "throughput": seen * self.ctx.world_size / max(elapsed, 1e-9), "epoch_time": elapsed})
