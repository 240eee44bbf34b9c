"""Short probes of what makes the AID miniature's single-stage detectors learn on a CPU.

Each call trains one detector alone (no teacher, no distillation) through the engine
(``kd_engine.run.train``, the same path the notebook's arms take) for a given number of steps
and prints one markdown row: the setting, steps, wall time, the process's CPU time, test mAP /
AP50 and the load average before and after (the CPU is shared: wall times are only comparable at
similar load; CPU time is what one otherwise idle core would need).
``--step-bench`` instead times forward + backward steps of the model on one batch, with and
without channels_last, at the given thread count (no training, no mAP).

    PYTHONPATH=$PWD .venv/bin/python scripts/aid_levers.py --kind fcos --steps 800 --out probes.md
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

SIZES = {"student": {"width": 8, "depth": 1}, "teacher": {"width": 32, "depth": 2}}


def config(a) -> dict:
    steps_per_epoch = math.ceil(a.n_train / a.batch)
    epochs = max(1, round(a.steps / steps_per_epoch))
    model = {"name": a.kind, "params": {**SIZES[a.role], "fpn_channels": a.fpn,
                                        "anchor_base": a.anchor_base}}
    if a.kind == "retinanet":
        model["params"]["anchor_scales"] = a.anchor_scales
    opt = ({"name": "adamw", "lr": a.lr, "weight_decay": 1e-4} if a.opt == "adamw" else
           {"name": "sgd", "lr": a.lr, "momentum": 0.9, "weight_decay": 1e-4})
    return {"name": f"lever-{a.kind}-{a.role}", "seed": a.seed, "epochs": epochs, "eval_every": epochs,
            "grad_clip": 10.0, "threads": a.threads, "device": "cpu",
            "data": {"name": "scenes", "batch_size": a.batch, "eval_batch_size": 32, "split_seed": 0,
                     "params": {"n_train": a.n_train, "n_val": 16, "n_test": a.n_test,
                                "image_size": a.size, "objects": [1, 4], "clutter": [0, 2],
                                "min_box_size": 5.0, "object_scale": a.object_scale}},
            "student": model, "method": "scratch", "optimizer": opt,
            "schedule": {"name": "cosine", "warmup_iters": a.warmup}}


def step_bench(a) -> None:
    import torch

    from kd_engine.config import validate
    from kd_engine.data import build_data
    from kd_engine.data.detection.coco import detection_collate
    from kd_engine.models import build_model

    torch.set_num_threads(a.threads)
    cfg = validate({**config(a), "cache_dir": a.cache}, "step bench")
    from kd_engine.tasks.detection import DetectionTask
    data = DetectionTask.build_data(cfg)
    images, targets, _ = detection_collate([data.train[i] for i in range(a.batch)])
    for fmt in ("contiguous", "channels_last"):
        model = build_model(cfg.student, data.input_shape, data.num_classes)
        if fmt == "channels_last":
            model = model.to(memory_format=torch.channels_last)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        times, cpu = [], []
        for i in range(a.steps + 3):
            t, c = time.perf_counter(), time.process_time()
            loss = sum(model(images, targets).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= 3:
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
        print(f"| step bench {a.kind} {a.role} {a.size}px scales={a.anchor_scales} fpn={a.fpn} "
              f"threads={a.threads} {fmt} | {a.steps} | {sum(times) / len(times):.3f} s/step wall | "
              f"{sum(cpu) / len(cpu):.3f} s/step CPU | "
              f"load {os.getloadavg()[0]:.1f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", default="retinanet", choices=["retinanet", "fcos"])
    p.add_argument("--role", default="student", choices=list(SIZES))
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--object-scale", type=float, default=1.0)
    p.add_argument("--anchor-scales", type=int, default=3)
    p.add_argument("--anchor-base", type=float, default=6.0)
    p.add_argument("--fpn", type=int, default=64)
    p.add_argument("--steps", type=int, default=512)
    p.add_argument("--n-train", type=int, default=512)
    p.add_argument("--n-test", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--opt", default="adamw", choices=["adamw", "sgd"])
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "kdw-levers-cache"))
    p.add_argument("--step-bench", action="store_true")
    p.add_argument("--out", default=None, help="append the row to this markdown file")
    a = p.parse_args()
    if a.step_bench:
        return step_bench(a)
    from kd_engine.experiment import arm_config
    from kd_engine.run import train
    from kd_engine.store import open_run

    load0 = os.getloadavg()[0]
    cfg = config(a)
    runs = tempfile.mkdtemp(prefix="kdw-levers-")
    started, cpu0 = time.perf_counter(), time.process_time()
    run_dir = train(arm_config(cfg, {}, a.seed, runs, a.cache), distributed=False)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    m = open_run(run_dir).final_metrics()
    steps = cfg["epochs"] * math.ceil(a.n_train / a.batch)
    row = (f"| {a.kind} {a.role} {a.size}px obj×{a.object_scale:g} scales={a.anchor_scales if a.kind == 'retinanet' else '-'} "
           f"fpn={a.fpn} {a.opt} lr={a.lr:g} n_train={a.n_train} threads={a.threads} | {steps} | {wall:.0f} s | {cpu:.0f} s | "
           f"{m.get('test/student_mAP', float('nan')):.3f} | {m.get('test/student_AP50', float('nan')):.3f} | "
           f"{load0:.1f} → {os.getloadavg()[0]:.1f} |")
    print(row, flush=True)
    if a.out:
        with open(a.out, "a") as fh:
            fh.write(row + "\n")


if __name__ == "__main__":
    main()
