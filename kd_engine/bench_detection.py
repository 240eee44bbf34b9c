"""`make bench`, detection: what AID costs per training step over base distillation (issue 3).

Two arms train the same RetinaNet student with Zhang & Ma's attention-guided and non-local
distillation (configs/aid_retinanet.yaml's method, models and optimizer) and differ only in
the weighting:

* ``base``  ``weighting: uniform`` - every (image, FPN level) weighs 1: base distillation.
* ``aid``   ``weighting: aid`` (alpha 0.1, per_image_level) - weights exp(-alpha L^T) from the
            frozen teacher's own per-(image, level) losses.
* ``aid_cached``  the same, with ``distill.params.teacher_pass_cache: true``: the teacher's FPN maps and
            losses are stored per image in the warm-up epoch and replayed (offline KD for
            detection), so the timed steps skip the teacher's forward. Its ratio to ``aid`` is
            the cache's speed-up (goal: below 1).

Both start from the same student weights and the same distillation-head init, train on the same
batches in the same order (the engine's per-epoch shuffle) and distil from the same frozen
teacher, through the engine's own ``Trainer._train_epoch`` (with the detection task) with its defaults (per-step
scalars, per-instance records). The goal is AID/base <= 1.03: the teacher's forward pass, which
AID's weights come from, is already paid for by the distillation itself.

Workload: the config's per-step work exactly - 128-px scenes, batch 8, teacher RetinaNet
ResNet 32/64/128/256 x 2 blocks, student 8/16/32/64 x 1 block, FPN 64, SGD with warm-up and
gradient clipping - on a 64-scene training split (8 steps an epoch) instead of 1000, so that one
sample (one epoch, timed around the whole ``_train_epoch`` call, per-instance SQLite write
included) is short. The teacher is left untrained, as in ``kd_engine.bench``: the step's cost
depends on the architecture and the ground truth (anchor matching), not on the weights. Each arm
first trains one untimed warm-up epoch; then rounds interleave the arms, alternating which goes
first. The reported ratio is the median of the per-round ratios, with their 25th-75th
percentiles; CPU time (``time.process_time``) is shown beside wall time because it barely moves
when other processes share the machine.

    python -m kd_engine.bench_detection            # full: about 1.5 minutes on one CPU thread
    python -m kd_engine.bench_detection --quick    # smoke test: 64-px scenes, smaller models
"""
from __future__ import annotations

import copy
import math
import statistics
import sys
from pathlib import Path

import torch

from kd_engine.bench_harness import (Arm, bench_parser, busy_note, interleave, load_average, paired_ratio,
                                     preset_sizes, run_and_report, settings, summary, timed)

# configs/aid_retinanet.yaml's per-step workload, on a smaller training split.
WORKLOAD = {
    "name": "bench_detection", "method": "zhang_ma", "seed": 0, "epochs": 1000, "eval_every": 1000,
    "grad_clip": 10.0,
    "data": {"name": "scenes", "batch_size": 8, "eval_batch_size": 32,
             "params": {"n_train": 64, "n_val": 8, "n_test": 8, "image_size": 128}},
    "teacher": {"name": "retinanet", "params": {"width": 32, "depth": 2, "fpn_channels": 64}},
    "student": {"name": "retinanet", "params": {"width": 8, "depth": 1, "fpn_channels": 64}},
    "distill": {"task_weight": 1.0, "params": {"preset": "single_stage_baseline"}},
    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0001},
    "schedule": {"name": "cosine", "warmup_iters": 100},
}
# The two arms: only the weighting differs.
ARMS = {
    "base": {"strategy": "uniform", "params": {}},
    "aid": {"strategy": "aid", "params": {"alpha": 0.1, "granularity": "per_image_level"}},
    "aid_cached": {"strategy": "aid", "params": {"alpha": 0.1, "granularity": "per_image_level"}},
}
# aid_cached replays the frozen teacher's pass from the per-image cache (offline KD): the warm-up
# epoch fills it, so every timed step skips the teacher's forward.
DISTILL_EXTRA = {"aid_cached": {"teacher_pass_cache": True}}
FULL = {"rounds": 20, "epochs_per_sample": 1}
# Quick: a smoke test of the whole path (the numbers mean little).
QUICK = {"rounds": 2, "epochs_per_sample": 1, "n_train": 8, "image_size": 64,
         "teacher": {"width": 8, "depth": 1, "fpn_channels": 16},
         "student": {"width": 4, "depth": 1, "fpn_channels": 16}}
GOAL = 1.03


def _workload(quick: bool) -> dict:
    raw = copy.deepcopy(WORKLOAD)
    if quick:
        raw["data"]["params"].update(n_train=QUICK["n_train"], n_val=2, n_test=2,
                                     image_size=QUICK["image_size"])
        raw["teacher"]["params"] = dict(QUICK["teacher"])
        raw["student"]["params"] = dict(QUICK["student"])
    return raw


def _describe(model: dict) -> str:
    p = model["params"]
    return f"retinanet(width={p['width']}, depth={p['depth']}, fpn_channels={p['fpn_channels']})"


def run(rounds: int, epochs_per_sample: int, threads: int, device: str, quick: bool,
        runs_dir: Path, log=print) -> dict:
    from kd_engine.config import validate
    from kd_engine.data import DATASETS
    from kd_engine.methods.detection_base import DETECTION_METHODS
    from kd_engine.models import build_model
    from kd_engine.trainers import runtime
    from kd_engine.tasks.detection import DetectionTask
    from kd_engine.trainer import Trainer

    torch.set_num_threads(threads)
    raw = _workload(quick)
    raw.update(device=device, threads=threads, runs_dir=str(runs_dir), cache_dir=str(runs_dir / "cache"))
    cfgs = {}
    for name, w in ARMS.items():
        arm_raw = {**copy.deepcopy(raw), "weighting": copy.deepcopy(w)}
        arm_raw["distill"]["params"].update(DISTILL_EXTRA.get(name, {}))
        cfgs[name] = validate(arm_raw, f"bench_detection/{name}")
    cfg = cfgs["base"]
    dev = runtime.resolve_device(cfg.device)
    runtime.seed_everything(cfg.seed)  # as `train` does (this also turns on deterministic algorithms)
    data = DATASETS.get(cfg.data.name, field="data.name")(cfg.data, cfg.seed, cache_dir=cfg.cache_dir)
    shape, classes = data.input_shape, data.num_classes
    # The teacher is left untrained: the step time depends on its architecture, not its weights.
    teacher = build_model(cfg.teacher, shape, classes, field="teacher").to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    student = build_model(cfg.student, shape, classes, field="student")
    steps = max(1, math.ceil(len(data.train) / cfg.data.batch_size))
    method = DETECTION_METHODS.get(cfg.method, field="method")

    arms = []
    for name, arm_cfg in cfgs.items():
        torch.manual_seed(cfg.seed + 1)  # as kd_engine.run.train: the same distillation-head init
        distiller = method(arm_cfg, copy.deepcopy(student), copy.deepcopy(teacher), shape).to(dev)
        task = DetectionTask(arm_cfg, data, dev, runtime.SINGLE, lambda: runtime.autocast(dev, arm_cfg.amp))
        loop = Trainer(arm_cfg, task, distiller, "bench", None, run_id=name)

        def epoch(e: int, loop=loop) -> int:
            loop._train_epoch(e)
            return steps

        arm = Arm(name, epoch, part_names=("weights",))  # time inside the weighting strategy
        arm.loop = loop
        weighting = distiller.weighting
        weighting.detection_weights = timed(weighting.detection_weights, arm.parts, "weights")
        arms.append(arm)

    load_before = load_average()
    p = cfg.data.params
    log(f"workload: scenes {p['image_size']} px, {len(data.train)} training scenes, batch "
        f"{cfg.data.batch_size} ({steps} steps/epoch); teacher {_describe(raw['teacher'])} (frozen, "
        f"untrained), student {_describe(raw['student'])}; zhang_ma (single_stage_baseline); SGD, "
        f"grad clip 10; {threads} thread(s); device {dev}")
    log(f"{rounds} interleaved rounds x {len(arms)} arms x {epochs_per_sample} epoch(s), "
        "after one warm-up epoch per arm")

    interleave(arms, rounds, epochs_per_sample, dev, rotate=False)
    for arm in arms:
        if arm.loop.writer is not None:
            arm.loop.writer.close()
    load_after = load_average()

    series = {arm.name: arm for arm in arms}
    results = {
        "workload": {"dataset": "scenes", "image_size": p["image_size"], "train_samples": len(data.train),
                     "batch_size": cfg.data.batch_size, "steps_per_epoch": steps,
                     "teacher": _describe(raw["teacher"]), "student": _describe(raw["student"]),
                     "method": "zhang_ma (single_stage_baseline)", "arms": copy.deepcopy(ARMS),
                     "optimizer": "sgd(lr=0.01, momentum=0.9, weight_decay=1e-4), grad clip 10",
                     "config": "configs/aid_retinanet.yaml (per-step workload; training split reduced)"},
        "settings": settings(rounds, epochs_per_sample, threads, dev, [load_before, load_after]),
        "arms": {},
        "ratios": {},
    }
    for name, arm in series.items():
        results["arms"][name] = {"weighting": ARMS[name], "wall_ms_per_step": arm.wall, **summary(arm.wall),
                                 "cpu_ms_per_step": arm.cpu, "cpu_median": statistics.median(arm.cpu),
                                 "weighting_ms_per_step": statistics.median(arm.part_ms["weights"])}
    results["ratios"]["aid_vs_base"] = paired_ratio(series["aid"], series["base"], "AID vs base distillation",
                                                    GOAL)
    results["ratios"]["cached_vs_live"] = paired_ratio(series["aid_cached"], series["aid"],
                                                       "AID, teacher pass cached", 1.0, strict=True)
    return results


def table(results: dict) -> str:
    lines = [f"{'arm':<6} {'weighting':<32} {'wall ms/step':>12} {'p25-p75':>17} {'cpu ms/step':>12} "
             f"{'in weighting':>13}"]
    for name, a in results["arms"].items():
        w = a["weighting"]
        desc = w["strategy"] + (f" (alpha {w['params']['alpha']}, {w['params']['granularity']})"
                                if w["params"] else "")
        lines.append(f"{name:<6} {desc:<32} {a['median']:>12.2f} {a['p25']:>8.2f}-{a['p75']:<8.2f} "
                     f"{a['cpu_median']:>12.2f} {a['weighting_ms_per_step']:>10.3f} ms")
    lines.append("")
    lines.append(f"{'comparison':<26} {'ratio':>7} {'p25-p75':>13} {'cpu ratio':>9} {'goal':>6}  verdict")
    for c in results["ratios"].values():
        verdict = "PASS" if c["passed"] else "over goal"
        lines.append(f"{c['label']:<26} {c['ratio']:>6.3f}x {c['p25']:>6.3f}-{c['p75']:<6.3f} "
                     f"{c['cpu_ratio']:>8.3f}x {c['goal']:>5.2f}x  {verdict}")
    lines += busy_note(results, "the CPU-time ratio is")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("python -m kd_engine.bench_detection", "Step time of AID over base distillation "
                          "(Zhang & Ma, RetinaNet on scenes), side by side.", FULL, QUICK,
                          "artifacts/bench/detection.json",
                          quick_help="short smoke run on 64-px scenes and small models (the numbers mean little)")
    args = parser.parse_args(argv)
    rounds, epochs = preset_sizes(args, FULL, QUICK)
    run_and_report(lambda tmp: run(rounds, epochs, args.threads, args.device, args.quick, tmp),
                   "kdw-bench-detection-", args.quick, table, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
