"""`make bench`: the Python API's trainer against a bare PyTorch loop, side by side.

Both arms train the same student (the same initial weights) from the same frozen teacher on the
same batches in the same order, with the same loss (cross-entropy + Hinton KD, T=4) and the same
SGD settings; the workload is `kd_engine.bench`'s (digits, resnet width 32 -> width 8):

* ``bare``  what one writes by hand: teacher forward under no_grad, student forward,
            ``cross_entropy + kd``, zero_grad / backward / SGD step. Nothing recorded.
* ``api``   ``kd_engine.make_trainer(teacher, student, dataset, ...)`` with its defaults, driven
            one epoch per call with ``trainer.fit(epochs=1)``: per-step scalars (SQLite and
            TensorBoard), per-instance rows, and the epoch's end (feature disparities and attention
            maps on the probe, the checkpoint; no validation split is given).
* ``api_norec``  the same with recording off (no per-instance rows, no TensorBoard, scalars
            every 1000 steps), to show what the recording costs (info).
* ``bare_again``  a second, identical bare loop: its ratio to ``bare`` is the noise floor of the
            machine (an A/A comparison), the resolution at which the other ratios can be read.

One sample is one epoch of one arm. As in `kd_engine.bench`, the goal judges the training steps:
the epoch's end (`Trainer._end_of_epoch`, timed on its own) is left out of the ratio and reported
beside it, except the time it waits for the epoch's records (rows, scalars) to be committed,
which is the steps' recording and is counted in the ratio. After one untimed warm-up epoch per arm, rounds interleave
the arms, alternating which goes first; the reported ratio is the median of the per-round ratios
with their 25th-75th percentiles, wall-clock and CPU time (``time.process_time``, steadier on a
shared machine) side by side. Every step's loss is kept: the two arms must agree step for step
(within float rounding: the engine averages per-sample losses it also records), else the bench
fails, since a faster loop that trains something else measures nothing.

    python -m kd_engine.bench_api            # full
    python -m kd_engine.bench_api --quick    # smoke test: seconds, the timings mean little
"""
from __future__ import annotations

import copy
import gc
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kd_engine.bench import WORKLOAD
from kd_engine.bench_harness import Arm, bench_parser, median_interval, preset_sizes, run_and_report, timed
from kd_engine.bench_harness import summary as _summary
from kd_engine.bench_harness import sync as _sync

FULL = {"rounds": 40, "epochs_per_sample": 1}
QUICK = {"rounds": 2, "epochs_per_sample": 1}
GOAL = 1.03
LOSS_RTOL = 1e-4  # relative agreement of the arms' losses at every step
# the third arm (info): what the trainer costs without its per-step and per-instance recording
NO_RECORDING = {"instances": False, "eval_instances": False, "tensorboard": False, "scalars_every": 1000}
# The recording's work on the training thread, timed inside each sample of the ``api`` arm (info):
# what of the gap to ``api_norec`` is the training thread's own, the rest being the store's writer
# thread and TensorBoard mirror process competing for the 2 cores and the GIL.
RECORDING_PARTS = {
    "_step_scalars": "per-step scalars kept (references), every step",
    "train_rows": "per-instance tensors kept (references), every step",
    "_queue_instances": "a chunk of rows handed to the writer thread, every 32 steps",
    "_write_instances": "the epoch's last rows handed to the writer thread, once per epoch",
    "_flush_scalars": "the kept scalars handed to the writer thread (stacked there), once per epoch or second",
    "drain": "the wait for the epoch's records to be committed, at its end (counted in the steps)",
}
_OWNERS = {"train_rows": "task", "drain": "writer"}  # whose method a part is (else the trainer's)


class _Arm(Arm):
    """The harness's arm (wall here leaves the epoch's end out), plus the end's own timing and
    every step's loss."""

    def __init__(self, name: str, epoch, part_names=()):
        super().__init__(name, epoch, part_names)
        self.epoch_end = [0.0, 0.0]  # wall and CPU seconds of the epoch's end in the current sample
        self.end_wall: list[float] = []  # the epoch's end, ms per step, one per round
        self.losses: list[torch.Tensor] = []  # every step's loss, timed epochs and warm-up alike


def _bare_arm(cfg, train, student, teacher, device, name: str = "bare") -> _Arm:
    """The hand-written loop, on the batches the classification task draws (the same seeded
    order per epoch over the same rows)."""
    from kd_engine.losses.logit import kd
    from kd_engine.trainers.runtime import epoch_generator

    opt = cfg.optimizer
    optimizer = torch.optim.SGD(student.parameters(), lr=opt.lr, momentum=opt.momentum,
                                weight_decay=opt.weight_decay)
    temperature = cfg.distill.terms[0].params["temperature"]
    arm = _Arm(name, None)

    def epoch(e: int) -> int:
        student.train()
        order = torch.randperm(len(train.y), generator=epoch_generator(cfg.seed, e))
        batches = torch.tensor_split(order, max(1, math.ceil(len(order) / cfg.data.batch_size)))
        for idx in batches:
            x, y = train.x[idx].to(device), train.y[idx].to(device)
            with torch.no_grad():
                t_logits = teacher(x)
            s_logits = student(x)
            loss = F.cross_entropy(s_logits, y) + kd(s_logits, t_logits, temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            arm.losses.append(loss.detach())
        return len(batches)

    arm.epoch = epoch
    return arm


def _api_arm(cfg, train, student, teacher, runs_dir: Path, threads: int, name: str = "api",
             record: dict | None = None, parts=()) -> _Arm:
    """``kd_engine.make_trainer`` on the same data and settings; ``parts`` names trainer (or task)
    methods timed inside each sample."""
    import kd_engine
    from torch.utils.data import TensorDataset

    trainer = kd_engine.make_trainer(
        teacher, student, TensorDataset(train.x, train.y, train.ids), terms=[t.model_dump() for t in cfg.distill.terms],
        optimizer=cfg.optimizer.model_dump(), epochs=cfg.epochs, runs_dir=runs_dir, name="bench_api",
        run_id=name, batch_size=cfg.data.batch_size, teacher_spec=cfg.teacher.model_dump(include={"name", "params"}),
        student_spec=cfg.student.model_dump(include={"name", "params"}), schedule=cfg.schedule.model_dump(),
        device=cfg.device, threads=threads, seed=cfg.seed, record=record or {})
    arm = _Arm(name, None, parts)

    def epoch(e: int) -> int:
        assert trainer.global_step == e * steps, "the API trainer is not at the bare loop's epoch"
        losses = trainer.fit(epochs=1)
        arm.losses.extend(losses)
        return len(losses)

    steps = math.ceil(len(train.y) / cfg.data.batch_size)
    arm.epoch, arm.trainer = epoch, trainer
    end_of_epoch = trainer._end_of_epoch

    waited = {"drain": 0.0}  # the epoch's end waits for the recording: that wait is the steps' cost
    drain = timed(trainer.writer.drain, waited, "drain")

    def timed_end(e: int) -> None:  # an instance attribute shadows the method
        # CPU: the training thread's own (time.thread_time), so that the writer thread's work
        # during the end stays counted in the steps' process time
        wall, cpu, before = time.perf_counter(), time.thread_time(), waited["drain"]
        try:
            end_of_epoch(e)
        finally:
            wait = waited["drain"] - before
            arm.epoch_end[0] += time.perf_counter() - wall - wait
            arm.epoch_end[1] += time.thread_time() - cpu

    trainer._end_of_epoch = timed_end
    trainer.writer.drain = drain
    for part in arm.part_names:  # instance attributes shadow the methods; ~1 us per call
        owner = getattr(trainer, _OWNERS.get(part, ""), trainer)
        setattr(owner, part, timed(getattr(owner, part), arm.parts, part))
    return arm


def check_losses(bare: list[torch.Tensor], api: list[torch.Tensor], rtol: float = LOSS_RTOL) -> float:
    """The largest relative deviation of the API's loss from the bare loop's over all steps;
    AssertionError naming the first step where they part, or a different number of steps."""
    if len(bare) != len(api):
        raise AssertionError(f"bench_api: {len(bare)} bare steps against {len(api)} API steps")
    a, b = torch.stack(api).double().cpu(), torch.stack(bare).double().cpu()
    relative = (a - b).abs() / b.abs().clamp_min(1e-12)
    bad = torch.nonzero(~(relative <= rtol))
    if len(bad):
        step = int(bad[0])
        raise AssertionError(f"bench_api: the losses differ at step {step}: bare {float(b[step]):.8g}, "
                             f"API {float(a[step]):.8g} (relative deviation {float(relative[step]):.2e} > {rtol:g})")
    return float(relative.max())


def _sample(arm: _Arm, first_epoch: int, epochs: int, device: torch.device) -> None:
    """Train ``epochs`` epochs of ``arm``; its ms per step without the epoch's end, and the end's."""
    gc.collect()
    arm.epoch_end = [0.0, 0.0]
    arm.parts.clear()
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    steps = sum(arm.epoch(first_epoch + k) for k in range(epochs))
    _sync(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    arm.wall.append((wall - arm.epoch_end[0]) * 1000.0 / steps)
    arm.cpu.append((cpu - arm.epoch_end[1]) * 1000.0 / steps)
    arm.end_wall.append(arm.epoch_end[0] * 1000.0 / steps)
    for part in arm.part_names:
        arm.part_ms.setdefault(part, []).append(arm.parts.get(part, 0.0) * 1000.0 / steps)


def run(rounds: int, epochs_per_sample: int, threads: int, device: str, runs_dir: Path, log=print) -> dict:
    from kd_engine.config import validate
    from kd_engine.data import build_data
    from kd_engine.models import build_model
    from kd_engine.trainers import runtime

    torch.set_num_threads(threads)
    total_epochs = 1 + rounds * epochs_per_sample
    raw = dict(copy.deepcopy(WORKLOAD), device=device, threads=threads, epochs=total_epochs,
               runs_dir=str(runs_dir))
    cfg = validate(raw, "bench_api")
    dev = runtime.resolve_device(cfg.device)
    runtime.seed_everything(cfg.seed)
    data = build_data(cfg.data, cfg.seed)
    train = data.train
    teacher = build_model(cfg.teacher, data.input_shape, data.num_classes, field="teacher").to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    student = build_model(cfg.student, data.input_shape, data.num_classes, field="student").to(dev)
    arms = [_bare_arm(cfg, train, copy.deepcopy(student), copy.deepcopy(teacher), dev),
            _api_arm(cfg, train, copy.deepcopy(student), copy.deepcopy(teacher), runs_dir, threads,
                     parts=RECORDING_PARTS),
            _api_arm(cfg, train, copy.deepcopy(student), copy.deepcopy(teacher), runs_dir, threads,
                     "api_norec", NO_RECORDING),
            _bare_arm(cfg, train, copy.deepcopy(student), copy.deepcopy(teacher), dev, "bare_again")]
    steps = math.ceil(len(train) / cfg.data.batch_size)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    log(f"workload: digits, {len(train)} training samples, batch {cfg.data.batch_size} ({steps} steps/epoch); "
        f"teacher {cfg.teacher.name}{cfg.teacher.params}, student {cfg.student.name}{cfg.student.params}; "
        f"cross-entropy + kd(T=4); SGD; {threads} thread(s); device {dev}")
    log(f"{rounds} interleaved rounds x {len(arms)} arms x {epochs_per_sample} epoch(s), after one warm-up epoch each")
    for arm in arms:
        _sample(arm, 0, 1, dev)
        arm.wall.clear(), arm.cpu.clear(), arm.end_wall.clear(), arm.part_ms.clear()
    epoch = 1
    for r in range(rounds):
        order = arms[r % len(arms):] + arms[:r % len(arms)]  # rotate, and reverse every other round
        for arm in (order if r % 2 == 0 else order[::-1]):
            _sample(arm, epoch, epochs_per_sample, dev)
        epoch += epochs_per_sample
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if not all(arm.trainer.finished for arm in arms[1:3]):
        raise RuntimeError("bench_api: an API trainer did not finish its run")

    deviation = max(check_losses(arms[0].losses, arm.losses) for arm in arms[1:])
    norec = _summary([a / b for a, b in zip(arms[2].wall, arms[0].wall)])
    floor = _summary([a / b for a, b in zip(arms[3].wall, arms[0].wall)])
    paired = [a / b for a, b in zip(arms[1].wall, arms[0].wall)]
    stats = _summary(paired)
    whole = _summary([(a + e) / b for a, e, b in zip(arms[1].wall, arms[1].end_wall, arms[0].wall)])
    return {
        "workload": {"dataset": "digits", "train_samples": len(train), "batch_size": cfg.data.batch_size,
                     "steps_per_epoch": steps, "teacher": f"{cfg.teacher.name}{cfg.teacher.params}",
                     "student": f"{cfg.student.name}{cfg.student.params}", "loss": "cross_entropy + kd(T=4)",
                     "api": "make_trainer defaults, trainer.fit(epochs=1) per sample (checkpoint included)"},
        "settings": {"rounds": rounds, "epochs_per_sample": epochs_per_sample, "threads": threads,
                     "device": str(dev), "torch": torch.__version__, "python": platform.python_version(),
                     "cpu_count": os.cpu_count(), "load_average": [load_before, load_after]},
        "arms": {arm.name: {"wall_ms_per_step": arm.wall, **_summary(arm.wall), "cpu_ms_per_step": arm.cpu,
                            "cpu_median": statistics.median(arm.cpu)} for arm in arms},
        "ratio": {"label": "API trainer vs bare loop", "ratio": stats["median"], "per_round": paired,
                  **{k: stats[k] for k in ("p25", "p75", "min", "max")}, "median_95": median_interval(paired),
                  "cpu_ratio": statistics.median(a / b for a, b in zip(arms[1].cpu, arms[0].cpu)),
                  "goal": GOAL, "passed": stats["median"] <= GOAL},
        "recording_off": {"label": "API trainer, recording off, vs bare loop", "ratio": norec["median"],
                          "p25": norec["p25"], "p75": norec["p75"], "record": NO_RECORDING,
                          "cpu_ratio": statistics.median(a / b for a, b in zip(arms[2].cpu, arms[0].cpu))},
        "noise_floor": {"label": "bare loop again vs bare loop (A/A: the machine's noise)",
                        "ratio": floor["median"], "p25": floor["p25"], "p75": floor["p75"],
                        "median_95": median_interval([a / b for a, b in zip(arms[3].wall, arms[0].wall)])},
        "epoch_end": {"label": "API trainer with its epoch's end vs bare loop", "ratio": whole["median"],
                      "p25": whole["p25"], "p75": whole["p75"],
                      "ms_per_step": statistics.median(arms[1].end_wall),
                      "what": "feature disparities and attention maps on the probe, checkpoint, flush"},
        "recording_parts": {part: {"label": label, "ms_per_step": statistics.median(arms[1].part_ms[part]),
                                   "share_of_bare_step": statistics.median(
                                       a / b for a, b in zip(arms[1].part_ms[part], arms[0].wall))}
                            for part, label in RECORDING_PARTS.items()},
        "losses": {"steps": len(arms[0].losses), "max_relative_deviation": deviation, "tolerance": LOSS_RTOL,
                   "agree": True},
    }


def table(results: dict) -> str:
    lines = [f"{'arm':<10} {'wall ms/step':>12} {'p25-p75':>15} {'cpu ms/step':>12}"]
    for name, a in results["arms"].items():
        lines.append(f"{name:<10} {a['median']:>12.3f} {a['p25']:>7.3f}-{a['p75']:<7.3f} {a['cpu_median']:>12.3f}")
    r, losses = results["ratio"], results["losses"]
    lines.append("")
    lo, hi = r["median_95"]
    lines.append(f"{r['label']}: {r['ratio']:.3f}x (p25-p75 {r['p25']:.3f}-{r['p75']:.3f}; 95% interval of the "
                 f"median {lo:.3f}-{hi:.3f}; cpu {r['cpu_ratio']:.3f}x), goal {r['goal']:.2f}x: "
                 f"{'PASS' if r['passed'] else 'over goal'}"
                 + (" (the interval holds the goal: within this machine's noise)" if lo <= r["goal"] <= hi else ""))
    off = results["recording_off"]
    lines.append(f"{off['label']}: {off['ratio']:.3f}x (p25-p75 {off['p25']:.3f}-{off['p75']:.3f}; "
                 f"cpu {off['cpu_ratio']:.3f}x) (info: record {off['record']})")
    floor = results["noise_floor"]
    lines.append(f"{floor['label']}: {floor['ratio']:.3f}x (p25-p75 {floor['p25']:.3f}-{floor['p75']:.3f}; "
                 f"95% interval of the median {floor['median_95'][0]:.3f}-{floor['median_95'][1]:.3f})")
    end = results["epoch_end"]
    lines.append(f"{end['label']}: {end['ratio']:.3f}x (p25-p75 {end['p25']:.3f}-{end['p75']:.3f}); the "
                 f"epoch's end ({end['what']}) adds {end['ms_per_step']:.3f} ms per step (info)")
    lines.append("the recording's work on the training thread, api arm (info):")
    for part, entry in results["recording_parts"].items():
        lines.append(f"  {part:<17} {entry['ms_per_step']:.3f} ms/step ({100 * entry['share_of_bare_step']:.1f} % of "
                     f"a bare step): {entry['label']}")
    lines.append(f"losses agree at all {losses['steps']} steps (max relative deviation "
                 f"{losses['max_relative_deviation']:.1e}, tolerance {losses['tolerance']:g})")
    load, cpus = results["settings"]["load_average"], results["settings"]["cpu_count"] or 1
    if load[0] is not None and max(load) > cpus:
        lines.append(f"\nnote: the machine was busy (load average {max(load):.1f} on {cpus} CPUs); "
                     "wall-clock ratios are noisy, the CPU-time ratio is the steadier estimate")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("python -m kd_engine.bench_api", "The Python API's trainer against a bare "
                          "PyTorch loop on the same models and batches.", FULL, QUICK, "artifacts/bench/api.json")
    args = parser.parse_args(argv)
    rounds, epochs = preset_sizes(args, FULL, QUICK)
    run_and_report(lambda tmp: run(rounds, epochs, args.threads, args.device, tmp),
                   "kdw-bench-api-", args.quick, table, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
