"""The training loop every run goes through: distillation, teachers and scratch baselines.

It records everything the dashboard shows (per-step scalars, per-instance records, per-layer
disparities, attention maps), checkpoints every epoch atomically, resumes exactly, and stops
cleanly on a non-finite loss or SIGTERM.
"""
from __future__ import annotations

import logging
import math
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from kd_engine.cache import build_teacher
from kd_engine.checks import check_names
from kd_engine.config import ExperimentConfig, FeaturePair, load_raw, validate
from kd_engine.data import build_data
from kd_engine.data.base import augment_batch, save_sources
from kd_engine.data.detection.builders import dataset_task
from kd_engine.errors import ConfigError, KDWError, NonFiniteLossError
from kd_engine.methods import METHODS
from kd_engine.models import build_model, count_parameters
from kd_engine.store import RunWriter
from kd_engine.trainers import runtime
from kd_engine.trainers.checkpoint import load_state, save_state, save_weights
from kd_engine.trainers.evaluate import RecorderGuard, predict, record_features
from kd_engine.trainers.optim import apply_warmup, build_optimizer, build_scheduler

log = logging.getLogger("kdw")


class StopRequested(KDWError):
    """SIGTERM (e.g. the dashboard's Stop button) arrived; the last epoch checkpoint stands."""


def _raise_stop(signum, frame):
    raise StopRequested("stopped by request (SIGTERM)")


def _feature_pairs(cfg: ExperimentConfig, distiller, student, teacher) -> list[FeaturePair]:
    """Layers whose teacher-student disparity is recorded: the configured pairs, else the
    distilled layers, else the layers both models share by name."""
    if teacher is None:
        return []
    if cfg.record.features:
        return list(cfg.record.features)
    pairs = {(t.student_layer, t.teacher_layer) for t in getattr(distiller, "terms", [])
             if getattr(t, "student_layer", None)}
    if not pairs:
        shared = [n for n in getattr(student, "feature_layers", [])
                  if n in getattr(teacher, "feature_layers", [])]
        pairs = {(n, n) for n in shared}
    return [FeaturePair(student=s, teacher=t) for s, t in sorted(pairs)]


def train(cfg: ExperimentConfig | None, resume: str | Path | None = None, distributed: bool = True,
          run_id: str | None = None) -> Path:
    """Run one experiment (or continue `resume`, a run directory) and return its directory."""
    if resume is not None:
        cfg = validate(load_raw(Path(resume) / "config.yaml"), str(Path(resume) / "config.yaml"))
    check_names(cfg)
    if dataset_task(cfg.data.name) == "detection":
        from kd_engine.trainers.detection_loop import train_detection

        return train_detection(cfg, resume, distributed, run_id)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = runtime.SINGLE
    device = runtime.resolve_device(cfg.device)
    if distributed:
        ctx = runtime.init_distributed(device)
        device = runtime.resolve_device(cfg.device, ctx.local_rank)
    runtime.seed_everything(cfg.seed)
    data = build_data(cfg.data, cfg.seed)
    student = build_model(cfg.student, data.input_shape, data.num_classes, field="student")
    method = METHODS.get(cfg.method, field="method")
    if cfg.teacher is not None:  # report mistakes in terms, layers or weighting before a teacher trains
        method(cfg, student, build_model(cfg.teacher, data.input_shape, data.num_classes, field="teacher"),
               data.input_shape)
    if cfg.teacher_cache:  # the teacher's soft labels come from a bank; the teacher is not loaded
        from kd_engine.teacher_bank import bank_distiller, prepare_bank

        bank = prepare_bank(cfg, data, device, ctx.is_main, ctx.barrier)
        distiller, teacher_source = bank_distiller(cfg, method, student, data, bank).to(device), str(bank.directory)
        return _Loop(cfg, ctx, device, data, distiller, teacher_source, resume, run_id).run()
    teacher, teacher_source = build_teacher(cfg, data.input_shape, data.num_classes, ctx.is_main, ctx.barrier)
    torch.manual_seed(cfg.seed + 1)  # adapters get the same init whether or not a teacher was cached
    distiller = method(cfg, student, teacher, data.input_shape).to(device)
    loop = getattr(distiller, "make_loop", _Loop)  # a method may bring its own loop (a _Loop subclass)
    return loop(cfg, ctx, device, data, distiller, teacher_source, resume, run_id).run()


class _Loop:
    def __init__(self, cfg, ctx, device, data, distiller, teacher_source, resume, run_id=None):
        self.cfg, self.ctx, self.device, self.data = cfg, ctx, device, data
        self.distiller = distiller
        self.student, self.teacher = distiller.student, distiller.teacher
        self.model = DistributedDataParallel(distiller) if ctx.enabled else distiller
        self.autocast = lambda: runtime.autocast(device, cfg.amp)
        self.optimizer = build_optimizer(cfg.optimizer, distiller.trainable_parameters())
        self.scheduler = build_scheduler(cfg.schedule, self.optimizer, cfg.epochs)
        self.split_streams = hasattr(self.optimizer, "backward_streams")
        if self.split_streams and (ctx.enabled or cfg.grad_clip):
            raise ConfigError(f"optimizer.name: {cfg.optimizer.name} takes two backward passes a step, "
                              "which DDP and grad_clip do not support here")
        self.pairs = _feature_pairs(cfg, distiller, self.student, self.teacher)
        self.start_epoch, self.global_step = 0, 0
        self.writer: RunWriter | None = None
        self.run_dir: Path | None = Path(resume) if resume is not None else None
        self.teacher_source = teacher_source
        self._teacher_eval: dict[str, object] = {}
        self._open_store(resume, run_id)
        self._recorders = _recorder_guard(cfg, self.writer)

    # -- store --------------------------------------------------------------------------------
    def _open_store(self, resume, run_id) -> None:
        if resume is not None:
            state = load_state(self.run_dir / "checkpoints" / "state.pt")
            self._restore(state)
            if self.start_epoch >= self.cfg.epochs:
                raise KDWError(f"{self.run_dir}: the run already finished all {self.cfg.epochs} epochs")
        if not self.ctx.is_main:
            return
        cfg = self.cfg
        if resume is None:
            meta = {"method": cfg.method, "dataset": cfg.data.name, "student": _describe(cfg.student),
                    "teacher": _describe(cfg.teacher) if cfg.teacher else None,
                    "weighting": cfg.weighting.strategy, "seed": cfg.seed, "epochs": cfg.epochs,
                    "device": str(self.device), "world_size": self.ctx.world_size,
                    "teacher_source": self.teacher_source,
                    "student_params": count_parameters(self.student),
                    "teacher_params": count_parameters(self.teacher) if self.teacher else None,
                    "class_names": self.data.class_names, "input_shape": list(self.data.input_shape)}
            self.writer = RunWriter.create(cfg.runs_dir, cfg.name, meta, cfg.to_yaml(), run_id=run_id,
                                           tensorboard=cfg.record.tensorboard)
            self.run_dir = self.writer.run_dir
            self._save_images()
        else:
            self.writer = RunWriter(self.run_dir, tensorboard=cfg.record.tensorboard)
            self.writer.truncate_from_epoch(self.start_epoch)
            self.writer.set_status("running")
            self.writer.event(f"resumed at epoch {self.start_epoch}")
        if self.teacher is not None and resume is None:
            save_weights(self.teacher, self.run_dir / "checkpoints" / "teacher.safetensors",
                         {"model": cfg.teacher.name, "params": cfg.teacher.params})

    def _save_images(self) -> None:
        save_sources(self.writer, self.data)  # instance id -> file path / dataset index
        ids = np.concatenate([split.ids.numpy() for split in (self.data.train, self.data.val, self.data.test)])
        if ids.size * int(np.prod(self.data.input_shape)) <= 50_000_000:
            self.writer.save_images(ids, self.data.images(ids))

    # -- checkpoints --------------------------------------------------------------------------
    def _state(self, epoch: int) -> dict:
        return {"epoch": epoch, "global_step": self.global_step,
                "distiller": {k: v for k, v in self.distiller.state_dict().items()
                              if not k.startswith("teacher.")},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "torch_rng": torch.get_rng_state()}

    def _split_seed(self) -> int:
        return self.cfg.data.split_seed if self.cfg.data.split_seed is not None else self.cfg.seed

    def _restore(self, state: dict) -> None:
        self.distiller.load_state_dict(state["distiller"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.start_epoch, self.global_step = state["epoch"] + 1, state["global_step"]

    def _checkpoint(self, epoch: int) -> None:
        checkpoints = self.run_dir / "checkpoints"
        save_state(checkpoints / "state.pt", self._state(epoch))
        save_weights(self.student, checkpoints / "student.safetensors",
                     {"model": self.cfg.student.name, "params": self.cfg.student.params, "epoch": epoch,
                      "data": {"name": self.cfg.data.name, "split_seed": self._split_seed()}})

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> Path:
        previous = signal.signal(signal.SIGTERM, _raise_stop) if self.ctx.is_main else None
        try:
            for epoch in range(self.start_epoch, self.cfg.epochs):
                self._train_epoch(epoch)
                self.scheduler.step()  # on every rank: DDP replicas must share the learning rate
                if self.ctx.is_main:
                    self._end_of_epoch(epoch)
                self.ctx.barrier()
            if self.ctx.is_main:
                self._finish()
        except BaseException as exc:
            if self.writer is not None:
                status = "stopped" if isinstance(exc, (StopRequested, KeyboardInterrupt)) else "failed"
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self.writer.set_status(status, error=None if status == "stopped" else message)
                self.writer.event(message, level="error" if status == "failed" else "info")
                self.writer.close()
                self.writer = None
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        if self.writer is not None:
            self.writer.close()
        return self.run_dir

    def _batches(self, epoch: int):
        train = self.data.train
        n = len(train)
        order = torch.randperm(n, generator=runtime.epoch_generator(self.cfg.seed, epoch))
        world = self.ctx.world_size
        if world > 1:  # pad so every rank gets the same number of batches; padding is not recorded
            order = torch.cat([order, order[: (-n) % world]])
            real = torch.arange(len(order)) < n
            order, real = order[self.ctx.rank::world], real[self.ctx.rank::world]
        else:
            real = torch.ones(n, dtype=torch.bool)
        count = max(1, math.ceil(len(order) / self.cfg.data.batch_size))
        for positions, keep in zip(torch.tensor_split(order, count), torch.tensor_split(real, count)):
            yield augment_batch(train, train.x[positions]), train.y[positions], train.ids[positions], keep

    def _train_epoch(self, epoch: int) -> None:
        self.model.train()
        self.distiller.begin_epoch(epoch, self.cfg.epochs)
        records: list[dict[str, torch.Tensor]] = []
        pending: list[tuple[int, dict[str, torch.Tensor]]] = []
        started, seen, last_flush = time.perf_counter(), 0, time.perf_counter()
        for x, y, ids, keep in self._batches(epoch):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self.autocast():  # methods on a teacher bank or per-instance targets need the ids
                out = (self.model(x, y, ids=ids.to(self.device)) if self.distiller.wants_ids
                       else self.model(x, y))
            loss = self._optimize(out, epoch)
            if self.cfg.record.instances:
                records.append(self._instance_record(out, y, ids, keep, epoch))
            if self.ctx.is_main and self.global_step % self.cfg.record.scalars_every == 0:
                pending.append((self.global_step, self._step_scalars(out, loss)))
            seen += len(y)
            self.global_step += 1
            if self.ctx.is_main and time.perf_counter() - last_flush > 1.0:
                self._flush_scalars(pending, epoch)
                last_flush = time.perf_counter()
        self._write_instances(records)  # inside the timed span: recording is part of the cost
        if self.ctx.is_main:
            self._flush_scalars(pending, epoch)
            elapsed = time.perf_counter() - started
            self.writer.log_scalars(self.global_step, epoch, {
                "throughput": seen * self.ctx.world_size / max(elapsed, 1e-9), "epoch_time": elapsed})

    def _optimize(self, out, epoch: int) -> torch.Tensor:
        """One optimisation step on a method's output (shared by every loop): refuse a
        non-finite loss before it touches the weights, backward, clip, warm up, step."""
        loss = out.total
        if not torch.isfinite(loss):
            bad = [k for k, v in out.losses.items() if not torch.isfinite(v)]
            raise NonFiniteLossError(f"non-finite loss ({', '.join(bad) or 'total'}) at epoch {epoch} "
                                     f"step {self.global_step}; the last good checkpoint is kept")
        self._backward(out, loss)
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.distiller.trainable_parameters(), self.cfg.grad_clip)
        apply_warmup(self.optimizer, self.scheduler, self.cfg.schedule.warmup_iters, self.global_step)
        self.optimizer.step()
        self.distiller.after_step(self.global_step, epoch)
        return loss

    def _backward(self, out, loss: torch.Tensor) -> None:
        """One backward pass, or, for an optimizer with separate gradient streams (DOT), the task
        loss and the sum of every other loss handed over separately."""
        if not self.split_streams:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            return
        others = [value for name, value in out.losses.items() if name != "task"]
        self.optimizer.backward_streams(out.losses["task"], sum(others) if others else None)

    def _step_scalars(self, out, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        values = {f"train/{name}": v.detach() for name, v in out.losses.items()}
        values["train/loss"] = loss.detach()
        for key, per_sample in out.per_sample.items():
            if key in ("student_loss", "teacher_loss", "weight") or key.startswith("term_"):
                name = key.replace("term_", "term/")
                values[f"train/{name}" if key != "weight" else "train/weight_mean"] = per_sample.float().mean()
        for key, value in getattr(out, "scalars", {}).items():  # a method's batch-level diagnostics
            values[f"train/{key}"] = value.detach().float()
        values["lr"] = torch.tensor(self.optimizer.param_groups[0]["lr"], device=loss.device)
        return values

    def _flush_scalars(self, pending: list, epoch: int) -> None:
        if not pending:
            return
        stacked = torch.stack([torch.stack(list(values.values())).float().cpu() for _, values in pending])
        keys = list(pending[0][1])
        for (step, _), row in zip(pending, stacked.tolist()):
            self.writer.log_scalars(step, epoch, dict(zip(keys, row)))
        self.writer.flush()
        self.writer.heartbeat()
        pending.clear()

    def _instance_record(self, out, y, ids, keep, epoch) -> dict[str, torch.Tensor]:
        probs = out.logits.detach().float().softmax(1)
        record = {"instance_id": ids, "label": y.detach(),
                  "step": torch.full_like(ids, self.global_step), "epoch": torch.full_like(ids, epoch)}
        record["student_conf"], record["student_pred"] = probs.max(1)
        if out.teacher_logits is not None:
            record["teacher_conf"], record["teacher_pred"] = out.teacher_logits.float().softmax(1).max(1)
        for key, value in out.per_sample.items():
            record[key] = value.detach().float()
        if self.ctx.world_size == 1:  # nothing is padded: skip a masked copy per column
            return {k: v.detach().cpu() for k, v in record.items()}
        keep = keep.to(y.device)
        return {k: v.detach()[keep].cpu() for k, v in record.items()}

    def _write_instances(self, records: list[dict[str, torch.Tensor]]) -> None:
        if not self.cfg.record.instances:
            return
        local = {k: torch.cat([r[k] for r in records]).numpy() for k in records[0]} if records else {}
        if self.ctx.enabled:
            gathered = [None] * self.ctx.world_size if self.ctx.is_main else None
            dist.gather_object(local, gathered, dst=0)
            if not self.ctx.is_main:
                return
            local = {k: np.concatenate([g[k] for g in gathered if g]) for k in local}
        if local:
            self.writer.log_instances({"split": np.full(len(local["instance_id"]), "train"), **local})

    # -- evaluation ---------------------------------------------------------------------------
    def _evaluate(self, split: str, epoch: int, record: bool = True) -> dict[str, float]:
        dataset = getattr(self.data, split)
        batch = self.cfg.data.eval_batch_size
        student = predict(self.student, dataset, self.device, batch, self.autocast)
        columns = {"instance_id": student.ids.numpy(), "label": student.labels.numpy(),
                   **student.per_sample("student")}
        metrics = {f"{split}/student_{k}": v for k, v in student.summary().items()}
        if self.teacher is not None:
            if split not in self._teacher_eval:  # the teacher is frozen: evaluate it once
                self._teacher_eval[split] = predict(self.teacher, dataset, self.device, batch, self.autocast)
            teacher = self._teacher_eval[split]
            columns.update(teacher.per_sample("teacher"))
            metrics.update({f"{split}/teacher_{k}": v for k, v in teacher.summary().items()})
        if record:
            self._log_eval_instances(split, epoch, columns)
        return metrics

    def _log_eval_instances(self, split: str, epoch: int, columns: dict) -> None:
        """Per-instance rows of an evaluation pass (val each epoch, test at the end)."""
        n = len(columns["instance_id"])
        if self.cfg.record.eval_instances and n:
            self.writer.log_instances({"split": np.full(n, split), "epoch": np.full(n, epoch),
                                       "step": np.full(n, self.global_step), **columns})

    def _end_of_epoch(self, epoch: int) -> None:
        due = (epoch + 1) % self.cfg.eval_every == 0 or epoch + 1 == self.cfg.epochs
        metrics = self._evaluate("val", epoch) if len(self.data.val) and due else {}
        self.writer.log_scalars(self.global_step, epoch, metrics)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.endswith("acc"))
        log.info("%s epoch %d/%d %s", self.cfg.name, epoch + 1, self.cfg.epochs, shown)
        self._recorders.run("features", self._record_features, epoch)
        self._checkpoint(epoch)
        self.writer.flush()
        self.writer.heartbeat()

    def _record_features(self, epoch: int) -> None:
        if self.pairs:
            probe = self.data.val if len(self.data.val) else self.data.train
            record_features(self.writer, self.student, self.teacher, self.pairs, probe, epoch,
                            self.cfg.record, self.device, self.autocast, self._recorders)

    def _finish(self) -> None:
        final: dict[str, float] = {}
        for split in ("val", "test"):
            if len(getattr(self.data, split)):  # val was recorded at the last epoch's end already
                final.update(self._evaluate(split, self.cfg.epochs - 1, record=split == "test"))
        self.writer.log_scalars(self.global_step, self.cfg.epochs - 1,
                                {k: v for k, v in final.items() if k.startswith("test/")})
        final["student_params"] = float(count_parameters(self.student))
        self.writer.set_meta(final_metrics=final)
        self.writer.set_status("finished")
        self.writer.event("finished")


def _recorder_guard(cfg, writer) -> RecorderGuard:
    """The per-epoch recorders' budget (record.budget_seconds / budget_mb): a recorder that fails
    or overruns logs one warning and the run trains on; a stop request still stops it."""
    event = (lambda message, level: writer.event(message, level=level)) if writer is not None else None
    return RecorderGuard(cfg.record.budget_seconds, cfg.record.budget_mb,
                         passthrough=(StopRequested, KeyboardInterrupt), event=event)


def _describe(spec) -> str:
    params = ", ".join(f"{k}={v}" for k, v in sorted(spec.params.items()))
    return f"{spec.name}({params})"
