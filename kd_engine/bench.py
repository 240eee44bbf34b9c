"""`make bench`: what the engine's bookkeeping costs per training step, measured side by side.

Three arms train the same student from the same initial weights on the same batches, in the
same order, with the same frozen teacher and the same loss (cross-entropy + Hinton KD, T=4):

* ``bare``          a hand-written PyTorch loop: teacher forward under no_grad, student forward,
                    ``cross_entropy + kd``, zero_grad / backward / SGD step. Nothing recorded.
* ``engine``        the real engine, ``Trainer._train_epoch``, with its defaults: per-step scalars
                    (SQLite and TensorBoard) and per-instance records (``record.instances: true``).
* ``engine_norec``  the same engine with ``record.instances: false``.
* ``plain``         the engine training the student alone (method ``scratch``, no teacher).
* ``kd_cache``      the engine with ``use_teacher_bank: true`` (FKD's soft-label bank, used by FerKD, paper 15): each
                    step replays one stored crop per image with its stored teacher logits; no
                    teacher forward. The bank (8 views per image) is built once before timing.

``kd_cache`` over ``plain`` is what the cache is for (goal <= 1.10x); ``engine`` (online KD) over
``plain`` is shown beside it for contrast.

One sample is one training epoch (by default) of one arm, timed around the whole ``_train_epoch`` call:
the per-instance SQLite write at each epoch's end counts (as in the engine's own ``epoch_time``
scalar), evaluation and checkpoints do not (they
are not part of a training epoch). Each arm first trains one untimed warm-up epoch; then rounds
interleave the arms, rotating their order (``kd_engine.bench_harness``, shared by every bench module).
A round's ratio compares the arms within that round; the reported ratio is the median of the
per-round ratios, with their 25th-75th percentiles.
Wall-clock time is what the goals judge; CPU time (``time.process_time``) is shown beside it
because it barely moves when other processes share the machine.

    python -m kd_engine.bench            # full: about a minute on one CPU thread
    python -m kd_engine.bench --quick    # smoke test: seconds, the numbers mean little
"""
from __future__ import annotations

import copy
import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from kd_engine.bench_harness import (Arm, bench_parser, busy_note, interleave, load_average, paired_ratio,
                                     preset_sizes, run_and_report, settings, summary, timed)

# The workload: configs/digits_kd.yaml's data, models, loss and optimizer.
WORKLOAD = {
    "name": "bench", "method": "standard", "seed": 0, "epochs": 1000,
    "data": {"name": "digits", "batch_size": 64},
    "teacher": {"name": "resnet", "params": {"width": 32, "depth": 1}},
    "student": {"name": "resnet", "params": {"width": 8, "depth": 1}},
    "distill": {"task_weight": 1.0, "terms": [{"loss": "kd", "weight": 1.0, "params": {"temperature": 4.0}}]},
    "weighting": {"strategy": "uniform"},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0005},
    "schedule": {"name": "constant"},
}
FULL = {"rounds": 50, "epochs_per_sample": 1}  # short samples: load changes less within a round
QUICK = {"rounds": 2, "epochs_per_sample": 1}
GOAL = 1.05
CACHE_GOAL = 1.10  # KD from the teacher bank against the plain student
CACHE_VIEWS = 8
# (key, arm, reference arm, label, goal or None)
COMPARISONS = (
    ("engine_vs_bare", "engine", "bare", "engine (recording on) vs bare loop", GOAL),
    ("recording_on_vs_off", "engine", "engine_norec", "record.instances true vs false", GOAL),
    ("engine_norec_vs_bare", "engine_norec", "bare", "engine (instances off) vs bare loop", None),
    ("kd_cache_vs_plain", "kd_cache", "plain", "KD from the teacher bank vs plain student", CACHE_GOAL),
    ("kd_online_vs_plain", "engine", "plain", "online KD vs plain student", None),
)
# Engine methods timed inside each sample: where the engine's extra time goes.
PARTS = {
    "_write_instances": "per-instance rows -> SQLite, once per epoch",
    "_flush_scalars": "per-step scalars -> SQLite + TensorBoard",
    "train_rows": "per-instance tensors, every step (the task's train_rows)",
    "_step_scalars": "per-step scalar tensors, every step",
}

CACHE_PARTS = {"replay": "teacher bank: id lookup, this epoch's view of each image"}


def _bare_arm(cfg, data, student, teacher, device) -> Arm:
    """The reference: what one would write by hand for the same training."""
    from kd_engine.losses.logit import kd
    from kd_engine.trainers.runtime import autocast, epoch_generator

    opt = cfg.optimizer
    optimizer = torch.optim.SGD(student.parameters(), lr=opt.lr, momentum=opt.momentum,
                                weight_decay=opt.weight_decay)
    x_all, y_all = data.train.x, data.train.y
    temperature = cfg.distill.terms[0].params["temperature"]
    batch_size = cfg.data.batch_size

    def epoch(e: int) -> int:
        student.train()
        teacher.eval()
        order = torch.randperm(len(y_all), generator=epoch_generator(cfg.seed, e))  # the engine's order
        batches = torch.tensor_split(order, max(1, math.ceil(len(order) / batch_size)))
        for idx in batches:
            x, y = x_all[idx].to(device), y_all[idx].to(device)
            with autocast(device, cfg.amp):  # the engine's precision: bf16 on CUDA, none on the CPU
                with torch.no_grad():
                    t_logits = teacher(x)
                s_logits = student(x)
                loss = F.cross_entropy(s_logits.float(), y) + kd(s_logits.float(), t_logits.float(), temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return len(batches)

    return Arm("bare", epoch)


def _engine_arm(name, cfg, data, student, teacher, device, bank=None) -> Arm:
    """The real engine loop (run store, scalars, per-instance records), one epoch at a time."""
    from kd_engine.methods import METHODS
    from kd_engine.teacher_bank import bank_distiller
    from kd_engine.trainers import runtime
    from kd_engine.tasks.classification import ClassificationTask
    from kd_engine.trainer import Trainer

    method = METHODS.get(cfg.method)
    if bank is not None:  # as `train` builds a teacher-bank run: no teacher in the process
        distiller = bank_distiller(cfg, method, student, data, bank).to(device)
    else:
        distiller = method(cfg, student, teacher, data.input_shape).to(device)
    task = ClassificationTask(cfg, data, device, runtime.SINGLE, lambda: runtime.autocast(device, cfg.amp))
    loop = Trainer(cfg, task, distiller, "bench", None, run_id=name)
    steps = max(1, math.ceil(len(data.train) / cfg.data.batch_size))

    def epoch(e: int) -> int:
        loop._train_epoch(e)
        return steps

    arm = Arm(name, epoch, part_names=(*PARTS, *CACHE_PARTS))
    arm.loop = loop
    for part in PARTS:  # instance attributes shadow the methods; a timer costs ~1 us per call
        owner = task if part == "train_rows" else loop
        setattr(owner, part, timed(getattr(owner, part), arm.parts, part))
    if bank is not None:  # the cache's own work: id -> row, view draw, memmap read, crop replay
        distiller.replay = timed(distiller.replay, arm.parts, "replay")
    return arm


def _bank(cfg, data, teacher, device):
    """The kd_cache arm's teacher bank, labelled once by the (untrained) teacher, before timing."""
    from kd_engine.teacher_bank import TeacherBank, bank_dir, write_bank

    directory = bank_dir(cfg)
    directory.parent.mkdir(parents=True, exist_ok=True)
    write_bank(directory, teacher, data.train, cfg, device)
    return TeacherBank(directory, data.train)


def run(rounds: int, epochs_per_sample: int, threads: int, device: str, student_width: int,
        runs_dir: Path, log=print) -> dict:
    from kd_engine.config import validate
    from kd_engine.data import build_data
    from kd_engine.models import build_model
    from kd_engine.trainers import runtime

    torch.set_num_threads(threads)
    raw = copy.deepcopy(WORKLOAD)
    raw["student"]["params"]["width"] = student_width
    raw.update(device=device, threads=threads, runs_dir=str(runs_dir), cache_dir=str(runs_dir / "cache"))
    cfg = validate(raw, "bench")
    dev = runtime.resolve_device(cfg.device)
    runtime.seed_everything(cfg.seed)  # as `train` does (this also turns on deterministic algorithms)
    data = build_data(cfg.data, cfg.seed)
    shape, classes = data.input_shape, data.num_classes
    # The teacher is left untrained: the step time depends on its architecture, not its weights.
    teacher = build_model(cfg.teacher, shape, classes, field="teacher").to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    student = build_model(cfg.student, shape, classes, field="student").to(dev)

    def copies():  # every arm starts from the same weights
        return copy.deepcopy(student), copy.deepcopy(teacher)

    cfg_norec = cfg.model_copy(update={"record": cfg.record.model_copy(update={"instances": False})})
    plain_raw = {k: v for k, v in raw.items() if k not in ("teacher", "distill")}
    cfg_plain = validate({**plain_raw, "method": "scratch"}, "bench plain")
    cfg_cache = validate({**raw, "use_teacher_bank": True, "teacher_bank": {"views": CACHE_VIEWS}}, "bench kd_cache")
    bank = _bank(cfg_cache, data, teacher, dev)
    arms = [_bare_arm(cfg, data, *copies(), dev),
            _engine_arm("engine", cfg, data, *copies(), dev),
            _engine_arm("engine_norec", cfg_norec, data, *copies(), dev),
            _engine_arm("plain", cfg_plain, data, copy.deepcopy(student), None, dev),
            _engine_arm("kd_cache", cfg_cache, data, copy.deepcopy(student), None, dev, bank=bank)]
    steps = max(1, math.ceil(len(data.train) / cfg.data.batch_size))
    load_before = load_average()
    log(f"workload: digits, {len(data.train)} training samples, batch {cfg.data.batch_size} "
        f"({steps} steps/epoch); teacher resnet(width=32), student resnet(width={student_width}); "
        f"cross-entropy + kd(T=4); SGD; {threads} thread(s); device {dev}")
    log(f"{rounds} interleaved rounds x {len(arms)} arms x {epochs_per_sample} epoch(s), "
        "after one warm-up epoch per arm")

    interleave(arms, rounds, epochs_per_sample, dev)
    for arm in arms:
        if hasattr(arm, "loop") and arm.loop.writer is not None:
            arm.loop.writer.close()
    load_after = load_average()

    engine = arms[1]
    series = {arm.name: arm for arm in arms}

    results = {
        "workload": {"dataset": "digits", "train_samples": len(data.train), "batch_size": cfg.data.batch_size,
                     "steps_per_epoch": steps, "teacher": "resnet(width=32, depth=1)",
                     "student": f"resnet(width={student_width}, depth=1)", "loss": "cross_entropy + kd(T=4)",
                     "optimizer": "sgd(lr=0.05, momentum=0.9, weight_decay=5e-4)",
                     "kd_cache": f"teacher bank of {CACHE_VIEWS} crops per image, one replayed per step",
                     "plain": "method scratch (cross-entropy only, no teacher)"},
        "settings": settings(rounds, epochs_per_sample, threads, dev, [load_before, load_after]),
        "arms": {},
        "ratios": {},
        "engine_parts": {},
    }
    for name, arm in series.items():
        entry = {"wall_ms_per_step": arm.wall, **summary(arm.wall)}
        if arm.cpu:
            entry.update(cpu_ms_per_step=arm.cpu, cpu_median=statistics.median(arm.cpu))
        results["arms"][name] = entry
    for key, name, ref, label, goal in COMPARISONS:
        results["ratios"][key] = paired_ratio(series[name], series[ref], label, goal)
    bare = statistics.median(arms[0].wall)
    for part, label in PARTS.items():
        values = engine.part_ms[part]
        results["engine_parts"][part] = {
            "label": label, "ms_per_step": statistics.median(values),
            "share_of_engine_step": statistics.median(v / w for v, w in zip(values, engine.wall)),
            "share_of_bare_step": statistics.median(values) / bare}
    cache, plain = series["kd_cache"], series["plain"]
    for part, label in CACHE_PARTS.items():
        values = cache.part_ms[part]
        results["cache_parts"] = {part: {
            "label": label, "ms_per_step": statistics.median(values),
            "share_of_kd_cache_step": statistics.median(v / w for v, w in zip(values, cache.wall)),
            "share_of_plain_step": statistics.median(v / w for v, w in zip(values, plain.wall))}}
    return results


def table(results: dict) -> str:
    arms, lines = results["arms"], []
    lines.append(f"{'arm':<14} {'wall ms/step':>12} {'p25-p75':>15} {'cpu ms/step':>12}")
    for name, a in arms.items():
        cpu = f"{a['cpu_median']:>12.3f}" if "cpu_median" in a else f"{'':>12}"
        lines.append(f"{name:<14} {a['median']:>12.3f} {a['p25']:>7.3f}-{a['p75']:<7.3f} {cpu}")
    lines.append("")
    lines.append(f"{'comparison':<42} {'arm':<13} {'reference':<13} {'ratio':>7} {'p25-p75':>13} "
                 f"{'cpu ratio':>9} {'goal':>6}  verdict")
    for c in results["ratios"].values():
        cpu = f"{c['cpu_ratio']:>8.3f}x" if c["cpu_ratio"] is not None else f"{'':>9}"
        goal = f"{c['goal']:>5.2f}x" if "goal" in c else f"{'':>6}"
        verdict = ("PASS" if c["passed"] else "over goal") if "goal" in c else "(info)"
        lines.append(f"{c['label']:<42} {c['arm']:<13} {c['reference']:<13} {c['ratio']:>6.3f}x "
                     f"{c['p25']:>6.3f}-{c['p75']:<6.3f} {cpu} {goal}  {verdict}")
    lines.append("")
    lines.append("where the engine's time goes (engine arm, medians over rounds):")
    lines.append(f"  {'method':<18} {'what':<44} {'ms/step':>8} {'% of engine step':>17} {'% of bare step':>15}")
    for part, p in results["engine_parts"].items():
        lines.append(f"  {part:<18} {p['label']:<44} {p['ms_per_step']:>8.3f} "
                     f"{100 * p['share_of_engine_step']:>16.1f}% {100 * p['share_of_bare_step']:>14.1f}%")
    lines.append("")
    lines.append("where the kd_cache arm's cache time goes (medians over rounds):")
    for part, p in results.get("cache_parts", {}).items():
        lines.append(f"  {part:<18} {p['label']:<52} {p['ms_per_step']:>8.3f} ms/step "
                     f"{100 * p['share_of_kd_cache_step']:>5.1f}% of a kd_cache step, "
                     f"{100 * p['share_of_plain_step']:>5.1f}% of a plain step")
    lines += busy_note(results)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("python -m kd_engine.bench", "Engine step time against a bare PyTorch loop, "
                          "and recording on against off.", FULL, QUICK, "artifacts/bench/engine.json")
    parser.add_argument("--student-width", type=int, default=8, help="student resnet width (default 8)")
    args = parser.parse_args(argv)
    rounds, epochs = preset_sizes(args, FULL, QUICK)
    run_and_report(lambda tmp: run(rounds, epochs, args.threads, args.device, args.student_width, tmp),
                   "kdw-bench-", args.quick, table, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
