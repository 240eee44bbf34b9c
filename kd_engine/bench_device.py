"""`kdw bench --device cuda|cpu [--quick]`: the CIFAR-100 KD benchmark config's training speed
(images/s) and peak GPU memory through the engine, beside a bare PyTorch loop on the same device.

The workload is ``configs/cifar100/kd/resnet32x4_resnet8x4.yaml`` (resnet32x4 -> resnet8x4,
cross-entropy x 0.1 + KD(T=4) x 0.9, SGD, batch 64) on ``torchvision.datasets.FakeData`` of
CIFAR-100's shape (3x32x32, 100 classes), with augmentation off in both arms so that they do the
same work. The teacher is left untrained: the step time depends on its architecture only.

* ``bare``:   a hand-written loop: teacher forward under no_grad, student forward, loss,
              zero_grad / backward / SGD step, under the engine's precision (bf16 on CUDA).
* ``engine``: ``Trainer._train_epoch`` with the config's defaults, recording on (per-step
              scalars and per-instance rows).

Both arms come from `kd_engine.bench` (the CPU overhead benchmark of ``make bench``) and start
from the same weights; each trains one untimed warm-up epoch, then the rounds interleave them.
Images/s is the median over rounds; peak memory is ``torch.cuda.max_memory_allocated`` over an
arm's timed epochs (the CPU has no such counter: the process's peak RSS is shown instead).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "cifar100" / "kd" / "resnet32x4_resnet8x4.yaml"
FULL = {"images": 2048, "rounds": 5}
QUICK = {"images": 256, "rounds": 2}


def workload(device: str, images: int, batch_size: int | None, runs_dir: Path) -> dict:
    """The benchmark config as a raw dict: the shipped file on FakeData of its shape."""
    from kd_engine.config import load_raw

    raw = load_raw(CONFIG)
    batch = batch_size or raw["data"]["batch_size"]
    raw["data"] = {"name": "fakedata", "image_size": 32, "val_fraction": 0.0, "batch_size": batch,
                   "augment": "none", "params": {"train_size": images, "test_size": batch, "num_classes": 100}}
    raw["teacher"].pop("train", None)
    raw.update(device=device, runs_dir=str(runs_dir), cache_dir=str(runs_dir / "cache"))
    return raw


def run(device: str, images: int, rounds: int, batch_size: int | None = None, threads: int | None = None,
        log=print) -> dict:
    import torch

    from kd_engine.bench import _bare_arm, _engine_arm
    from kd_engine.bench_harness import sample as _sample
    from kd_engine.config import validate
    from kd_engine.data import build_data
    from kd_engine.models import build_model
    from kd_engine.trainers import runtime

    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="kdw-bench-") as tmp:
        cfg = validate(workload(device, images, batch_size, Path(tmp)), str(CONFIG))
        dev = runtime.resolve_device(cfg.device)
        runtime.seed_everything(cfg.seed)
        data = build_data(cfg.data, cfg.seed)
        shape, classes = data.input_shape, data.num_classes
        teacher = build_model(cfg.teacher, shape, classes, field="teacher").to(dev).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        torch.manual_seed(cfg.seed)
        student = build_model(cfg.student, shape, classes, field="student").to(dev)
        arms = [_bare_arm(cfg, data, copy.deepcopy(student), copy.deepcopy(teacher), dev),
                _engine_arm("engine", cfg, data, copy.deepcopy(student), copy.deepcopy(teacher), dev)]
        load_before = os.getloadavg()[0]
        log(f"workload: {CONFIG.relative_to(CONFIG.parents[3])} on FakeData 3x32x32, {len(data.train)} images, "
            f"batch {cfg.data.batch_size}, amp {cfg.amp}; device {dev}; {torch.get_num_threads()} CPU thread(s)")
        peak = {arm.name: 0 for arm in arms}
        started = time.perf_counter()
        for arm in arms:  # warm-up: allocator, kernels, SQLite tables
            _sample(arm, 0, 1, dev)
            arm.wall.clear(), arm.cpu.clear(), arm.part_ms.clear()
        for r in range(rounds):
            for arm in (arms if r % 2 == 0 else arms[::-1]):
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                _sample(arm, 1 + r, 1, dev)
                if dev.type == "cuda":
                    peak[arm.name] = max(peak[arm.name], torch.cuda.max_memory_allocated(dev))
        for arm in arms:
            if getattr(arm, "loop", None) is not None and arm.loop.writer is not None:
                arm.loop.writer.close()
        wall = time.perf_counter() - started
    batch = cfg.data.batch_size
    results = {"workload": {"config": str(CONFIG.relative_to(CONFIG.parents[3])), "data": "FakeData 3x32x32, 100 classes",
                            "images": len(data.train), "batch_size": batch, "amp": cfg.amp,
                            "teacher": cfg.teacher.name, "student": cfg.student.name},
               "settings": {"device": str(dev), "device_name": _device_name(dev), "rounds": rounds,
                            "threads": torch.get_num_threads(), "torch": torch.__version__,
                            "python": platform.python_version(), "cpu_count": os.cpu_count(),
                            "load_average": [load_before, os.getloadavg()[0]], "wall_s": wall,
                            "date": time.strftime("%Y-%m-%d")},
               "arms": {}}
    for arm in arms:
        per_image_ms = [ms / batch for ms in arm.wall]  # ms per step over images per step
        results["arms"][arm.name] = {
            "images_per_s": 1000.0 / statistics.median(per_image_ms),
            "images_per_s_per_round": [1000.0 / v for v in per_image_ms],
            "peak_gpu_memory_mb": peak[arm.name] / 2**20 if dev.type == "cuda" else None}
    paired = [e / b for e, b in zip(results["arms"]["engine"]["images_per_s_per_round"],
                                    results["arms"]["bare"]["images_per_s_per_round"])]
    results["engine_vs_bare"] = statistics.median(paired)  # rounds pair the arms: load changes between rounds
    results["engine_vs_bare_per_round"] = paired
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return results


def _device_name(dev) -> str:
    import torch

    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return platform.processor() or platform.machine()


def table(results: dict) -> str:
    lines = [f"{'arm':<8} {'images/s':>10} {'peak GPU memory':>16}"]
    for name, arm in results["arms"].items():
        memory = f"{arm['peak_gpu_memory_mb']:>13.0f} MB" if arm["peak_gpu_memory_mb"] is not None else f"{'n/a (CPU)':>16}"
        lines.append(f"{name:<8} {arm['images_per_s']:>10.1f} {memory}")
    s = results["settings"]
    lines.append(f"engine/bare throughput: {results['engine_vs_bare']:.3f}; device {s['device']} ({s['device_name']}); "
                 f"peak RSS {results['peak_rss_mb']:.0f} MB; load {s['load_average'][0]:.2f} -> "
                 f"{s['load_average'][1]:.2f}; {s['wall_s']:.1f} s")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK['images']} images, {QUICK['rounds']} rounds "
                        "(a smoke test; the numbers mean little)")
    parser.add_argument("--images", type=int, help="FakeData training images (default: 2048; quick: 256)")
    parser.add_argument("--batch-size", type=int, help="default: the config's (64)")
    parser.add_argument("--rounds", type=int, help="timed epochs per arm (default: 5; quick: 2)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")


def command(args: argparse.Namespace) -> int:
    from kd_engine.errors import ConfigError

    budget = QUICK if args.quick else FULL
    images, rounds = args.images or budget["images"], args.rounds or budget["rounds"]
    for name, value in (("--images", images), ("--rounds", rounds), ("--batch-size", args.batch_size or 1)):
        if value < 1:
            raise ConfigError(f"bench {name}: expected a positive integer, got {value}")
    results = run(args.device, images, rounds, args.batch_size, args.threads, log=lambda m: print(m, file=sys.stderr))
    print(table(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0

