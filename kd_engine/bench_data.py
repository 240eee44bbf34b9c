"""`make bench`, data: what streaming costs against the in-memory path, and what the default
recording costs in a CIFAR-shaped epoch.

**(a) Streaming against in memory** (digits, ``kd_engine.bench``'s KD workload). Three arms train
the same student from the same weights on the same batches (one plan, `epoch_plan`):

* ``memory``     the in-memory fast path: batches sliced from one tensor.
* ``stream_w0``  the same images read item by item through a DataLoader in this process
                 (`stream_dataset` over the in-memory split: the streaming path's own overhead,
                 collation and the per-item seeding; decoding from disk would add to it).
* ``stream_w2``  the same, with two worker processes (persistent, prefetch 2).

Each sample is one training epoch through the engine's ``Trainer._train_epoch`` (recording at its
defaults), reported as training images per second; ``read`` samples time the task's batches alone
(no training), to show the data path by itself. Ratios are each streaming arm's time over the
memory arm's, per round.

**(b) The default recording's share of a CIFAR epoch** (configs/cifar100/kd/resnet32x4_resnet8x4.yaml:
resnet32x4 -> resnet8x4, KD, batch 64, the cifar preset) on FakeData of CIFAR-100's shape (32 px,
100 classes, held in memory as CIFAR-100 is). Two arms train the same batches:

* ``recording_off``  ``record.instances: false`` and no per-epoch recorder.
* ``recording_on``   the defaults: per-instance rows every step, written each epoch, and the
                     per-epoch feature recorder (sample-space CKA of the shared layers and
                     attention maps on the 256-image probe).

Per-step scalars are on in both (they are not optional). A real CIFAR-100 epoch is 50,000 images
(782 steps) while the recorder runs once per epoch, so a small epoch would overstate its share:
the share judged against the goal (<= 3 %) is the recording's time in a 782-step epoch, from the
parts timed inside the on arm (rows per step, the store write per image, the recorder per epoch),
over that epoch's time without recording (the off arm's step time x 782). The on/off ratio of the
measured (small) epoch is shown beside it. The teacher is untrained (step time depends on the
architecture only).

Rounds interleave the arms (alternating which goes first) after one untimed warm-up epoch per arm;
ratios are medians of per-round ratios with their 25th-75th percentiles; CPU time beside wall
time, since it barely moves when other processes share the machine.

    python -m kd_engine.bench_data            # full: a few minutes on one CPU thread
    python -m kd_engine.bench_data --quick    # smoke test (no TensorBoard mirror): the numbers mean little
"""
from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import sys
from pathlib import Path

import torch

from kd_engine.bench import WORKLOAD
from kd_engine.bench_harness import (Arm, bench_parser, busy_note, interleave, load_average, paired_ratio,
                                     preset_sizes, run_and_report, settings, summary, timed)

FULL = {"rounds": 10, "epochs_per_sample": 1}
QUICK = {"rounds": 1, "epochs_per_sample": 1}
RECORDING_GOAL = 0.03  # the default recording's share of a CIFAR-100 epoch
CIFAR_TRAIN = 50_000  # CIFAR-100's training images: the epoch the share is computed for
CIFAR_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "cifar100" / "kd" / "resnet32x4_resnet8x4.yaml"
# FakeData sizes of part (b): training images (a few steps) and validation images (the probe)
CIFAR_SIZES = {"full": {"train": 512, "val": 256, "batch": 64}, "quick": {"train": 16, "val": 8, "batch": 8}}
QUICK_DIGITS = 256  # training images of part (a) in quick mode
STREAM_ARMS = {"memory": None, "stream_w0": 0, "stream_w2": 2}


def _engine(name, cfg, data, student, teacher, dev):
    """A `Trainer` of ``cfg`` over ``data`` (no store run of its own beyond the bench's)."""
    from kd_engine.methods import METHODS
    from kd_engine.tasks.classification import ClassificationTask
    from kd_engine.trainer import Trainer
    from kd_engine.trainers import runtime

    torch.manual_seed(cfg.seed + 1)  # as kd_engine.run.train before building a distiller
    distiller = METHODS.get(cfg.method)(cfg, student, teacher, data.input_shape).to(dev)
    task = ClassificationTask(cfg, data, dev, runtime.SINGLE, lambda: runtime.autocast(dev, cfg.amp))
    return Trainer(cfg, task, distiller, "bench", None, run_id=name), task


def _train_epoch(loop, epoch: int) -> None:
    """One training epoch of a `Trainer`, run to its end (its eager form where the epoch loop
    is a generator of steps)."""
    eager = getattr(loop, "train_epoch", None)
    if eager is not None:
        eager(epoch)
    else:
        loop._train_epoch(epoch)


def _models(cfg, data, dev):
    from kd_engine.models import build_model

    teacher = build_model(cfg.teacher, data.input_shape, data.num_classes, field="teacher").to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    student = build_model(cfg.student, data.input_shape, data.num_classes, field="student").to(dev)
    return student, teacher


# -- (a) streaming against in memory ------------------------------------------------------------------
def run_streaming(rounds, epochs_per_sample, threads, device, quick, runs_dir, log=print) -> dict:
    from kd_engine.config import validate
    from kd_engine.data import build_data
    from kd_engine.data.loader import stream_dataset
    from kd_engine.trainers import runtime

    raw = copy.deepcopy(WORKLOAD)
    raw.update(device=device, threads=threads, runs_dir=str(runs_dir / "stream"), cache_dir=str(runs_dir / "cache"))
    if quick:  # stopping each arm's TensorBoard mirror takes seconds (untimed, but the smoke test waits)
        raw["record"] = {"tensorboard": False}
    base = validate(raw, "bench_data streaming")
    dev = runtime.resolve_device(base.device)
    runtime.seed_everything(base.seed)
    data = build_data(base.data, base.seed)
    if quick:
        data = dataclasses.replace(data, train=data.train.subset(range(QUICK_DIGITS)))
    train = data.train
    streamed = stream_dataset(train, labels=train.y.numpy(), ids=train.ids.numpy(), name="digits/train")
    student, teacher = _models(base, data, dev)
    steps = max(1, math.ceil(len(train) / base.data.batch_size))
    arms, tasks = [], {}
    for name, workers in STREAM_ARMS.items():
        arm_data = data if workers is None else dataclasses.replace(data, train=streamed)
        cfg = base if workers is None else validate({**raw, "data": {**raw["data"], "loader": {
            "num_workers": workers, "persistent_workers": True, "prefetch_factor": 2}}}, f"bench_data {name}")
        loop, task = _engine(name, cfg, arm_data, copy.deepcopy(student), copy.deepcopy(teacher), dev)
        arms.append(Arm(name, lambda e, loop=loop: (_train_epoch(loop, e), steps)[1]))
        arms[-1].engine, tasks[name] = loop, task
    readers = [Arm(f"read_{name}", lambda e, task=tasks[name]: sum(1 for _ in task.batches(e)))
               for name in STREAM_ARMS]
    log(f"(a) digits, {len(train)} training images, batch {base.data.batch_size} ({steps} steps/epoch); "
        f"KD resnet(32) -> resnet(8); {threads} thread(s); device {dev}")
    log(f"    {rounds} interleaved rounds x {len(arms)} training arms, then the same for reading only")
    interleave(arms, rounds, epochs_per_sample, dev, rotate=False)
    interleave(readers, rounds, epochs_per_sample, dev, rotate=False)
    for arm in arms:
        arm.engine.task.close_loaders()
        arm.engine.writer.close()
    out = {"workload": {"dataset": "digits", "train_samples": len(train), "batch_size": base.data.batch_size,
                        "steps_per_epoch": steps, "teacher": "resnet(width=32, depth=1)",
                        "student": "resnet(width=8, depth=1)",
                        "stream": "the in-memory split read item by item through a DataLoader (stream_dataset)"},
           "arms": {}, "ratios": {}}
    per_step = len(train) / steps
    for arm in arms + readers:
        ms = statistics.median(arm.wall)
        out["arms"][arm.name] = {"wall_ms_per_step": arm.wall, **summary(arm.wall), "cpu_median": statistics.median(arm.cpu),
                                 "images_per_s": per_step * 1000.0 / ms}
    by = {a.name: a for a in arms + readers}
    for name in ("stream_w0", "stream_w2"):
        out["ratios"][f"train_{name}_vs_memory"] = paired_ratio(by[name], by["memory"], f"train epoch, {name} vs memory")
        out["ratios"][f"read_{name}_vs_memory"] = paired_ratio(by[f"read_{name}"], by["read_memory"],
                                                               f"reading only, {name} vs memory")
    return out


# -- (b) the default recording's share of a CIFAR epoch --------------------------------------------------
def run_recording(rounds, epochs_per_sample, threads, device, quick, runs_dir, log=print) -> dict:
    from kd_engine.config import load_raw, validate
    from kd_engine.data import build_data
    from kd_engine.trainers import runtime

    sizes = CIFAR_SIZES["quick" if quick else "full"]
    raw = load_raw(CIFAR_CONFIG)
    cifar_batch = raw["data"]["batch_size"]  # the protocol's batch (64): the CIFAR epoch's steps
    total = sizes["train"] + sizes["val"]
    raw["data"] = {"name": "fakedata", "image_size": 32, "augment": raw["data"]["augment"], "batch_size": sizes["batch"],
                   "val_fraction": sizes["val"] / total,
                   "params": {"train_size": total, "test_size": 8, "num_classes": 100}}
    raw.update(device=device, threads=threads, epochs=1000, runs_dir=str(runs_dir / "recording"),
               cache_dir=str(runs_dir / "cache"))
    if quick:
        raw["record"] = {"tensorboard": False}
    on = validate(raw, "bench_data recording_on")
    off = validate({**raw, "record": {**raw.get("record", {}), "instances": False}}, "bench_data recording_off")
    dev = runtime.resolve_device(on.device)
    runtime.seed_everything(on.seed)
    data = build_data(on.data, on.seed)
    student, teacher = _models(on, data, dev)
    steps = max(1, math.ceil(len(data.train) / on.data.batch_size))
    arms = []
    for name, cfg in (("recording_off", off), ("recording_on", on)):
        loop, task = _engine(name, cfg, data, copy.deepcopy(student), copy.deepcopy(teacher), dev)
        recorder = name == "recording_on"

        def epoch(e, loop=loop, recorder=recorder):
            _train_epoch(loop, e)
            if recorder:
                loop._record_features(e)
            return steps

        arm = Arm(name, epoch, part_names=("train_rows", "_write_instances", "recorder"))
        arm.engine = loop
        for part, owner in (("train_rows", task), ("_write_instances", loop)):
            setattr(owner, part, timed(getattr(owner, part), arm.parts, part))
        if recorder:  # the per-epoch recorder, timed as a part of the sample
            loop._record_features = timed(loop._record_features, arm.parts, "recorder")
        arms.append(arm)

    probe = min(on.record.feature_probe_size, len(data.val))
    log(f"(b) {CIFAR_CONFIG.relative_to(CIFAR_CONFIG.parents[2])} on FakeData 32 px, 100 classes: "
        f"{len(data.train)} training images, batch {on.data.batch_size} ({steps} steps/epoch), "
        f"feature probe {probe} images; {threads} thread(s); device {dev}")
    log(f"    {rounds} interleaved rounds x 2 arms (recording off / on)")
    interleave(arms, rounds, epochs_per_sample, dev, rotate=False)
    for arm in arms:
        arm.engine.writer.close()
    off_arm, on_arm = arms
    # The recording's own time, from the parts timed inside the on arm (steadier under load than
    # the difference of two arms' wall times): rows per step, the store write per image (it
    # grows with the rows), the recorder once per epoch; then scaled to a CIFAR-100 epoch.
    # (the harness keeps each part in ms per step of the sample)
    rows_ms = statistics.median(on_arm.part_ms["train_rows"])
    write_ms = statistics.median(on_arm.part_ms["_write_instances"]) * steps / len(data.train)
    recorder_ms = statistics.median(on_arm.part_ms["recorder"]) * steps
    off_step = statistics.median(off_arm.wall)  # ms per step, recording off
    cifar_steps = math.ceil(CIFAR_TRAIN / cifar_batch)
    recording_ms = cifar_steps * rows_ms + CIFAR_TRAIN * write_ms + recorder_ms
    share = recording_ms / (cifar_steps * off_step)
    out = {"workload": {"config": str(CIFAR_CONFIG.relative_to(CIFAR_CONFIG.parents[2])), "dataset": "fakedata 32px x100",
                        "train_samples": len(data.train), "batch_size": on.data.batch_size, "steps_per_epoch": steps,
                        "probe": probe, "teacher": "resnet32x4 (untrained)", "student": "resnet8x4"},
           "arms": {}, "ratios": {"recording_on_vs_off": paired_ratio(on_arm, off_arm, "default recording on vs off")}}
    for arm in arms:
        out["arms"][arm.name] = {"wall_ms_per_step": arm.wall, **summary(arm.wall),
                                 "cpu_median": statistics.median(arm.cpu),
                                 "parts_ms_per_epoch": {k: statistics.median(v) * steps for k, v in arm.part_ms.items()}}
    out["cifar_epoch"] = {"steps": cifar_steps, "images": CIFAR_TRAIN, "step_ms_off": off_step,
                          "rows_ms_per_step": rows_ms, "write_ms_per_image": write_ms,
                          "recorder_ms_per_epoch": recorder_ms, "recording_ms_per_epoch": recording_ms,
                          "share": share, "goal": RECORDING_GOAL, "passed": share <= RECORDING_GOAL}
    return out


def run(rounds, epochs_per_sample, threads, device, quick, runs_dir: Path, log=print) -> dict:
    torch.set_num_threads(threads)
    load = [load_average()]
    results = {"streaming": run_streaming(rounds, epochs_per_sample, threads, device, quick, runs_dir, log),
               "recording": run_recording(rounds, epochs_per_sample, threads, device, quick, runs_dir, log)}
    results["settings"] = settings(rounds, epochs_per_sample, threads, device, load + [load_average()])
    return results


def table(results: dict) -> str:
    s, lines = results["streaming"], []
    lines.append(f"(a) streaming against in memory, digits ({s['workload']['train_samples']} images, "
                 f"batch {s['workload']['batch_size']})")
    lines.append(f"  {'arm':<16} {'images/s':>10} {'wall ms/step':>13} {'p25-p75':>15} {'cpu ms/step':>12}")
    for name, a in s["arms"].items():
        lines.append(f"  {name:<16} {a['images_per_s']:>10.0f} {a['median']:>13.3f} "
                     f"{a['p25']:>7.3f}-{a['p75']:<7.3f} {a['cpu_median']:>12.3f}")
    lines.append(f"  {'comparison':<36} {'ratio':>7} {'p25-p75':>13} {'cpu ratio':>9}")
    for c in s["ratios"].values():
        lines.append(f"  {c['label']:<36} {c['ratio']:>6.3f}x {c['p25']:>6.3f}-{c['p75']:<6.3f} {c['cpu_ratio']:>8.3f}x")
    r = results["recording"]
    c = r["cifar_epoch"]
    lines.append("")
    lines.append(f"(b) default recording, {r['workload']['config']} on FakeData ({r['workload']['train_samples']} "
                 f"images, batch {r['workload']['batch_size']}, probe {r['workload']['probe']})")
    for name, a in r["arms"].items():
        parts = ", ".join(f"{k} {v:.0f} ms" for k, v in a["parts_ms_per_epoch"].items() if v)
        lines.append(f"  {name:<14} {a['median']:>9.1f} ms/step (p25-p75 {a['p25']:.1f}-{a['p75']:.1f}, "
                     f"cpu {a['cpu_median']:.1f})" + (f"; per epoch: {parts}" if parts else ""))
    ratio = r["ratios"]["recording_on_vs_off"]
    lines.append(f"  on vs off, measured epoch: {ratio['ratio']:.3f}x (p25-p75 {ratio['p25']:.3f}-{ratio['p75']:.3f}, "
                 f"cpu {ratio['cpu_ratio']:.3f}x)")
    verdict = "PASS" if c["passed"] else "over goal"
    lines.append(f"  share of a CIFAR-100 epoch ({c['steps']} steps): {100 * c['share']:.2f} % "
                 f"(rows {c['rows_ms_per_step']:.2f} ms/step, store write {1000 * c['write_ms_per_image']:.1f} us/image, "
                 f"recorder {c['recorder_ms_per_epoch']:.0f} ms/epoch; a step without recording "
                 f"{c['step_ms_off']:.1f} ms); goal <= {100 * c['goal']:.0f} %: {verdict}")
    lines += busy_note(results, "CPU time (which leaves out the worker processes' own) is")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("python -m kd_engine.bench_data", "Streaming DataLoader against the in-memory path "
                          "(digits), and the default recording's share of a CIFAR-shaped epoch.", FULL, QUICK,
                          "artifacts/bench/data.json")
    args = parser.parse_args(argv)
    rounds, epochs = preset_sizes(args, FULL, QUICK)
    run_and_report(lambda tmp: run(rounds, epochs, args.threads, args.device, args.quick, tmp),
                   "kdw-bench-data-", args.quick, table, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
