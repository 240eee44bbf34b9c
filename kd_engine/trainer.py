"""The one trainer every run goes through, whatever its task (`kd_engine.tasks.Task`).

The trainer owns what all runs share: the optimizer step with its non-finite-loss guard, AMP,
gradient clipping, warm-up and schedules (accumulation, fp16 scaler, EMA: `trainers.stepper`),
per-step scalars, checkpoints every epoch (atomic; the best validation one: `trainers.best`),
exact resume, a clean stop on SIGTERM, DDP, and the run store. The task owns batches, rows,
evaluation and the dashboard's inputs; the method (a `Distiller`) owns the losses and may add
phases before the epochs (`Distiller.phases`), evaluation metrics (`evaluation_metrics`,
`epoch_metrics`) and the member it reports as the student (`reported_student`).

The trainer imports no orchestration: `kd_engine.run` builds the task, method and teacher and
hands them over.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from kd_engine.config import FeaturePair
from kd_engine.errors import KDWError
from kd_engine.faults import fault_point
from kd_engine.integrity import chance_warning
from kd_engine.models import count_parameters
from kd_engine.models.taps import check_layer_pairs
from kd_engine.optim import apply_warmup, build_optimizer, build_scheduler
from kd_engine.parts.ema import EMATeacher
from kd_engine.store import RunWriter
from kd_engine.tasks.base import Evaluation, Task
from kd_engine.trainers.best import BestCheckpoint
from kd_engine.trainers.checkpoint import load_state, save_state, save_weights
from kd_engine.trainers.evaluate import RecorderGuard
from kd_engine.trainers.loop import StepLoop, StopRequested
from kd_engine.trainers.meta import run_meta
from kd_engine.trainers.probes import record_features
from kd_engine.trainers.scalars import scalar_rows
from kd_engine.trainers.stepper import build_stepper, check_finite

log = logging.getLogger("kdw")


class Trainer(StepLoop):
    """Train ``distiller`` on ``task`` for ``cfg.epochs`` epochs, recording into a new run (or
    continuing ``resume``, a run directory). ``teacher_source`` says where the teacher came from.
    ``run()`` trains to the end; ``fit(steps=N)``/``fit(epochs=N)`` advance it one call at a time
    (`kd_engine.trainers.loop`)."""

    def __init__(self, cfg, task: Task, distiller, teacher_source: str | None = None,
                 resume: str | Path | None = None, run_id: str | None = None):
        self.cfg, self.task, self.ctx, self.device, self.data = cfg, task, task.ctx, task.device, task.data
        self.autocast = task.autocast
        self.distiller = distiller
        self.student, self.teacher = distiller.student, distiller.teacher
        task.bind(distiller)
        self.optimizer = build_optimizer(cfg.optimizer, distiller.trainable_parameters())
        self.scheduler = build_scheduler(cfg.schedule, self.optimizer, cfg.epochs)
        self.split_streams = hasattr(self.optimizer, "backward_streams")  # DOT: two backward passes a step
        # channels_last, SyncBatchNorm, accumulation, the fp16 scaler, the EMA (made before `compile`)
        self.steps = build_stepper(cfg, self.optimizer, self.device, distiller, self.split_streams,
                                   self.ctx.enabled, EMATeacher)
        self.model = DistributedDataParallel(distiller) if self.ctx.enabled else distiller
        self.best = BestCheckpoint.of(cfg, len(self.data.val))  # best_checkpoint.metric
        self.pairs = self._feature_pairs()
        self.start_epoch, self.global_step = 0, 0
        self.writer: RunWriter | None = None
        self.run_dir: Path | None = Path(resume) if resume is not None else None
        self.teacher_source = teacher_source
        self._last_val: dict[str, float] = {}
        self._records: dict[int, dict[str, int]] = {}  # per done epoch: what the store holds
        self._open_store(resume, run_id)
        event = (lambda message, level: self.writer.event(message, level=level)) if self.writer else None
        self._recorders = RecorderGuard(cfg.record.budget_seconds, cfg.record.budget_mb,
                                        passthrough=(StopRequested, KeyboardInterrupt), event=event)

    def _feature_pairs(self) -> list[FeaturePair]:
        """Layers whose teacher-student disparity is recorded: the configured pairs, else the
        method's (`Distiller.feature_pairs`)."""
        if self.teacher is None:
            return []
        if self.cfg.record.features:
            check_layer_pairs(self.student, self.teacher, self.cfg.record.features, "record.features")
            return list(self.cfg.record.features)
        return [FeaturePair(student=s, teacher=t) for s, t in sorted(set(self.distiller.feature_pairs()))]

    # -- store --------------------------------------------------------------------------------
    def _open_store(self, resume, run_id) -> None:
        if resume is not None:
            state = load_state(self.run_dir / "checkpoints" / "state.pt")
            self._restore(state)
        if not self.ctx.is_main:
            return
        if resume is not None:
            self._reopen_store()
        try:
            self._set_up_store(resume, run_id)
        except BaseException as exc:  # a failure while setting up (e.g. a full disk) is a failed run
            self._give_up(exc)
            raise

    def _reopen_store(self) -> None:
        """Resume: take the run's writer lock, then check the store against the checkpoint. A run
        whose last epoch is checkpointed but not finished resumes into its final evaluation."""
        self.writer = RunWriter.reopen(self.run_dir, tensorboard=self.cfg.record.tensorboard)
        try:
            if self.start_epoch >= self.cfg.epochs and self.writer.stored_status() == "finished":
                raise KDWError(f"{self.run_dir}: the run already finished all {self.cfg.epochs} epochs")
            self.writer.verify_records(self._records, self.start_epoch)
        except KDWError as exc:
            if self.writer.stored_status() != "finished":
                self.writer.set_status("failed", error=str(exc).splitlines()[0])
            self.writer.close()
            self.writer = None
            raise

    def _give_up(self, exc: BaseException) -> None:
        """Record a failure (or a stop) in the run's status and events, and close the store."""
        if self.writer is None:
            return
        status = "stopped" if isinstance(exc, (StopRequested, KeyboardInterrupt)) else "failed"
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        try:
            self.writer.set_status(status, error=None if status == "stopped" else message)
            self.writer.event(message, level="error" if status == "failed" else "info")
        finally:
            writer, self.writer = self.writer, None
            writer.close()

    def _set_up_store(self, resume, run_id) -> None:
        cfg = self.cfg
        if resume is None:
            meta = run_meta(cfg, self.data, self.device, self.ctx.world_size, self.teacher_source,
                            self.student, self.teacher)
            self.writer = RunWriter.create(cfg.runs_dir, cfg.name, meta, cfg.to_yaml(), run_id=run_id,
                                           tensorboard=cfg.record.tensorboard)
            self.run_dir = self.writer.run_dir
            self.task.save_inputs(self.writer)
            extra = self.task.run_meta(self.distiller)
            if extra:
                self.writer.set_meta(**extra)
        else:
            self.writer.truncate_from_epoch(self.start_epoch)
            finishing = self.start_epoch >= cfg.epochs
            if finishing:  # killed during the final evaluation: drop its partial records
                self.writer.truncate_final(cfg.epochs - 1)
            self.writer.set_status("running")
            self.writer.event("resumed for the final evaluation" if finishing
                              else f"resumed at epoch {self.start_epoch}")
        if self.teacher is not None and cfg.teacher is not None and resume is None:  # a teacher a method builds itself is its own to cache
            save_weights(self.teacher, self.run_dir / "checkpoints" / "teacher.safetensors",
                         {"model": cfg.teacher.name, "params": cfg.teacher.params})

    # -- checkpoints --------------------------------------------------------------------------
    def _state(self, epoch: int) -> dict:
        state = {"epoch": epoch, "global_step": self.global_step,
                 "distiller": {k: v for k, v in self.distiller.state_dict().items()
                               if not k.startswith("teacher.")},
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "torch_rng": torch.get_rng_state()}
        weighting = self.distiller.weighting_state()
        if weighting:
            state["weighting"] = weighting
        # For the resume: the last validation (the final metrics start from it) and what the
        # store held for each done epoch (a resume refuses a store that lost any of it).
        state["last_val"] = {k: float(v) for k, v in self._last_val.items()}
        state["records"] = self._records
        state["steps"] = self.steps.state_dict()  # optimizer steps, the fp16 scaler, the EMA
        state["best"] = self.best.state_dict()
        return state

    def _split_seed(self) -> int:
        return self.cfg.data.split_seed if self.cfg.data.split_seed is not None else self.cfg.seed

    def _restore(self, state: dict) -> None:
        self.distiller.load_state_dict(state["distiller"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.distiller.load_weighting_state(state.get("weighting", {}))
        torch.set_rng_state(state["torch_rng"])
        self.start_epoch, self.global_step = state["epoch"] + 1, state["global_step"]
        self._last_val = dict(state.get("last_val", {}))
        self._records = {int(k): dict(v) for k, v in state.get("records", {}).items()}
        self.steps.load_state_dict(state.get("steps", {}), default_steps=self.global_step)
        self.best.load_state_dict(state.get("best", {}))

    def _checkpoint(self, epoch: int) -> None:
        """The student's weights, then the training state: renaming state.pt into place is what
        marks the epoch done, so everything of the epoch is on disk before it."""
        checkpoints = self.run_dir / "checkpoints"
        self._records[epoch] = self.writer.epoch_counts(epoch)
        name, module, spec = self.distiller.reported_student()
        spec = spec or self.cfg.student
        meta = {"model": spec.name, "params": spec.params, "epoch": epoch}
        if name is not None:
            meta["member"] = name
        meta["data"] = {"name": self.cfg.data.name, "split_seed": self._split_seed()}
        with self.steps.evaluated() as weights:  # the EMA's when on; the state keeps the raw ones
            meta.update(weights)
            save_weights(module, checkpoints / "student.safetensors", meta)
            self.best.update(epoch, self._last_val, module, checkpoints, meta, self.writer)
        save_state(checkpoints / "state.pt", self._state(epoch))

    # -- the run (fit/run and the epoch iterator: kd_engine/trainers/loop.py) ----------------
    def _run_phase(self, phase) -> None:
        """A method's phase before the epochs (e.g. Cr-KD's stage 1): its own optimizer and
        learning rates, stepped through the trainer's guard, clipping and backward."""
        step = 0
        for batch in phase.batches():
            lr = phase.lr(step)
            if lr is not None:
                for group in phase.optimizer.param_groups:
                    group["lr"] = lr
            with self.autocast():
                out = phase.step(batch)
            total = out.total
            check_finite(out, total, f"{phase.name} step {step}", self.run_dir)
            phase.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self._clip(phase.parameters)
            phase.optimizer.step()
            phase.after_step()
            step += 1
        report = phase.finish()
        if self.writer is not None:
            self.writer.log_scalars(0, 0, report.scalars)
            for artifact in report.artifacts:
                self.writer.save_artifact(**artifact)
            if report.event:
                self.writer.event(report.event)

    # -- one optimisation step ----------------------------------------------------------------
    def _clip(self, parameters) -> None:
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(parameters, self.cfg.grad_clip)

    def _clip_trainable(self) -> None:
        if self.cfg.grad_clip:  # walk the modules for the parameters only when clipping (~0.3 ms a step)
            self._clip(self.distiller.trainable_parameters())

    def _optimize(self, out, epoch: int) -> torch.Tensor:
        """One batch on a method's output: guard, backward; then, once ``accumulate_steps``
        batches are in, unscale, clip, warm up, step (`kd_engine.trainers.stepper`)."""
        loss = out.total
        check_finite(out, loss, f"epoch {epoch} step {self.global_step}", self.run_dir)  # before any gradient
        self._backward(out, loss)
        if self.steps.due():
            self._step(epoch, self.global_step)
        out.scalars.update(self.steps.scalars(loss.device))  # fp16: amp/scale, amp/skipped_steps
        return loss

    def _step(self, epoch: int, step: int) -> None:  # warm-up counts optimizer steps, not batches
        self.steps.step(self._clip_trainable,
                        lambda n: apply_warmup(self.optimizer, self.scheduler, self.cfg.schedule.warmup_iters, n))
        self.distiller.after_step(step, epoch)

    def _backward(self, out, loss: torch.Tensor) -> None:
        """One backward pass, or, for an optimizer with separate gradient streams (DOT), the task
        loss and the sum of every other loss handed over separately."""
        others = [value for name, value in out.losses.items() if name != "task"]
        split = lambda _: self.optimizer.backward_streams(out.losses["task"], sum(others) if others else None)  # noqa: E731
        self.steps.backward(loss, split if self.split_streams else None)  # scaled under fp16, divided over a group

    # -- recording ----------------------------------------------------------------------------
    def _step_scalars(self, out, loss: torch.Tensor) -> tuple[tuple[str, ...], tuple[torch.Tensor, ...], float]:
        """This step's scalars as (names, detached tensors, learning rate): no arithmetic here. The
        flush stacks a span of steps at once, one operation per scalar instead of several per
        step. Detached, so that a kept loss never holds its step's graph (a retained one included)."""
        task = self.task.step_scalars(out)
        names = (*(f"train/{name}" for name in out.losses), "train/loss", *task, *out.scalars)
        values = tuple(v.detach() for v in (*out.losses.values(), loss, *task.values(), *out.scalars.values()))
        return names, values, float(self.optimizer.param_groups[0]["lr"])

    def _flush_scalars(self, pending: list, epoch: int) -> None:
        """Hand the pending steps' kept scalars to the store's writer thread, which stacks them
        (`scalar_rows`: a run of steps with the same names at a time; per-sample values become
        their means), with a heartbeat. The kept tensors are the steps' own detached results,
        never changed afterwards. Nothing waits here: the epoch's end waits for its records
        before the checkpoint counts them."""
        if not pending:
            return
        steps = list(pending)  # the loop's list is cleared and refilled; the writer thread keeps this one
        self.writer.queue_scalars(epoch, steps[0][0], lambda: scalar_rows(steps))
        self.writer.heartbeat(wait=False)
        pending.clear()

    def _queue_instances(self, rows: list[dict]) -> None:
        """Training rows of some steps to the store's writer thread (one process, no gather)."""
        if not rows:
            return
        merge = self.task.merge_rows

        def columns() -> dict:  # made on the writer thread: `rows` is no longer the loop's
            local = merge(rows)
            return {"split": np.full(len(local["instance_id"]), "train"), **local} if local else {}

        self.writer.queue_instances(columns)

    def _write_instances(self, rows: list[dict]) -> None:
        """This epoch's last training rows: each rank's own (padding already left out), gathered
        once under DDP. One process queues them; the epoch's end waits until all are committed."""
        if not self.cfg.record.instances:
            return
        if not self.ctx.enabled:  # the epoch's end waits for them (its validation overlaps the write)
            self._queue_instances(rows)
            return
        local = self.task.merge_rows(rows)
        gathered = [None] * self.ctx.world_size if self.ctx.is_main else None
        dist.gather_object(local, gathered, dst=0)
        if not self.ctx.is_main:
            return
        local = self.task.merge_rows([g for g in gathered if g])
        if local:
            self.writer.log_instances({"split": np.full(len(local["instance_id"]), "train"), **local})

    # -- evaluation ---------------------------------------------------------------------------
    def _evaluate(self, split: str, epoch: int, final: bool = False) -> dict[str, float]:
        """Evaluate on a split, record its per-instance rows and artifacts, return its metrics.
        The method's metrics come first (a group method picks its reported member on val)."""
        with self.steps.evaluated():  # the student EMA's weights when it is on (run meta: evaluated_weights)
            extra = self.distiller.evaluation_metrics(split, self.task)
            result: Evaluation = self.task.evaluate(split, self.student, self.teacher, final=final)
        metrics = {**result.metrics, **extra}
        self._log_eval_instances(split, epoch, result.columns)
        for artifact in result.artifacts:
            self.writer.save_artifact(artifact.name, artifact.array, kind=artifact.kind, dtype=artifact.dtype,
                                      role=artifact.role, epoch=artifact.epoch, meta=artifact.meta)
        return metrics

    def _log_eval_instances(self, split: str, epoch: int, columns: dict) -> None:
        """Per-instance rows of an evaluation pass (val each epoch, test at the end)."""
        n = len(columns.get("instance_id", ()))
        if self.cfg.record.eval_instances and n:
            self.writer.log_instances({"split": np.full(n, split), "epoch": np.full(n, epoch),
                                       "step": np.full(n, self.global_step), **columns})

    def _end_of_epoch(self, epoch: int) -> None:
        """Main rank, after each epoch: validation when due, the method's epoch metrics, feature
        disparities, the checkpoint."""
        metrics = self.distiller.epoch_metrics(self.task)
        if metrics:
            self.writer.log_scalars(self.global_step, epoch, metrics)
        due = (epoch + 1) % self.cfg.eval_every == 0 or epoch + 1 == self.cfg.epochs
        metrics = self._evaluate("val", epoch) if len(self.data.val) and due else {}
        self._last_val = metrics or self._last_val
        self.writer.log_scalars(self.global_step, epoch, metrics)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.endswith(self.task.headline))
        log.info("%s epoch %d/%d %s", self.cfg.name, epoch + 1, self.cfg.epochs, shown)
        self._record_features(epoch)
        self.writer.flush()  # the epoch's scalars are committed before the checkpoint says it is done
        self._checkpoint(epoch)
        fault_point("checkpointed")
        self.writer.heartbeat()

    def _record_features(self, epoch: int) -> None:
        """The per-epoch feature recorder, under its time and memory budget: if it fails or
        overruns, one warning is recorded and the run trains on."""
        if self.pairs:
            self._recorders.run("features", self._record_features_now, epoch)

    def _record_features_now(self, epoch: int) -> None:
        probe = self.task.probe_inputs(self.cfg.record.feature_probe_size)
        if probe is not None:
            self.pairs = record_features(self.writer, self.student, self.teacher, self.pairs, *probe, epoch,
                                         self.cfg.record.attention_maps, self.autocast,
                                         split="val" if len(self.data.val) else "train", guard=self._recorders)

    def _final_metrics(self) -> dict[str, float]:
        """The last validation pass's metrics and a test pass (recorded, with its artifacts)."""
        final = dict(self._last_val)
        if len(self.data.test):
            test = self._evaluate("test", self.cfg.epochs - 1, final=True)
            fault_point("final_eval")
            self.writer.log_scalars(self.global_step, self.cfg.epochs - 1,
                                    {k: v for k, v in test.items() if k.startswith("test/")})
            final.update(test)
        return {k: float(v) for k, v in final.items() if math.isfinite(v)}  # undefined APs dropped

    def _finish(self) -> None:
        final = self._final_metrics()
        name, module, _ = self.distiller.reported_student()
        final["student_params"] = float(count_parameters(module))
        self.writer.set_meta(final_metrics=final, **({} if name is None else {"reported_student": name}))
        warning = chance_warning(final, self.data.num_classes, len(self.data.test) or len(self.data.val))
        if warning:
            log.warning("%s: warning: %s", self.cfg.name, warning)
            self.writer.event(warning, level="warning")
        self.writer.set_meta(warning=warning)
        self.writer.set_status("finished")
        self.writer.event("finished" if name is None else f"finished; the reported student is {name}")
