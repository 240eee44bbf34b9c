"""The shared harness of every `make bench` entry point: arms timed side by side in interleaved rounds.

A benchmark compares *arms* (ways of doing the same work) on a shared, busy machine. Absolute
times drift with the load, so each arm is sampled once per *round*, the rounds interleave the arms
(rotating or alternating their order so that none always goes first), and a ratio is the median of
the per-round ratios of two arms: load that changes slowly cancels out of each round's ratio.

* `Arm`                    one way of doing the work; ``epoch(e)`` does unit `e`, returns its step count
* `timed`                  wraps a function so its seconds add up in a dict (where an arm's time goes)
* `sample`                 times one sample of an arm (wall and CPU ms per step, and its timed parts)
* `interleave`             one untimed warm-up sample per arm, then `rounds` interleaved samples
* `summary`, `paired_ratio`  median and quartiles of a series; one comparison's entry
* `load_average`, `settings`, `busy_note`  what the results record about the machine
* `bench_parser`, `preset_sizes`, `run_and_report`, `cli`  the command line and the JSON + table output

It imports nothing from the engine (the import contracts keep it at the bottom layer), so any
bench module, in the engine or the dashboard, can use it.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import torch


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so a sample's clock stops when its work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Arm:
    """One way of doing the work; `epoch(e)` does unit `e` (an epoch) and returns its step count.

    `part_names` lists the keys of `parts` (filled by `timed` wrappers) that `sample` turns into
    per-step series in `part_ms`, one value per round."""

    def __init__(self, name: str, epoch: Callable[[int], int], part_names: Iterable[str] = ()):
        self.name, self.epoch = name, epoch
        self.part_names = tuple(part_names)
        self.wall: list[float] = []  # ms per step, one per round
        self.cpu: list[float] = []
        self.parts: dict[str, float] = {}  # seconds spent in timed functions during the current sample
        self.part_ms: dict[str, list[float]] = {}  # ms per step in each, one per round


def timed(fn, totals: dict[str, float], key: str):
    """`fn`, adding the seconds each call takes to `totals[key]` (about 1 us per call)."""
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[key] = totals.get(key, 0.0) + time.perf_counter() - started
    return wrapper


def sample(arm: Arm, first_epoch: int, epochs: int, device: torch.device) -> None:
    """Train `epochs` epochs of `arm`; append its wall and CPU milliseconds per step."""
    gc.collect()
    arm.parts.clear()
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    steps = sum(arm.epoch(first_epoch + k) for k in range(epochs))
    sync(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    arm.wall.append(wall * 1000.0 / steps)
    arm.cpu.append(cpu * 1000.0 / steps)
    for part in arm.part_names:
        arm.part_ms.setdefault(part, []).append(arm.parts.get(part, 0.0) * 1000.0 / steps)


def interleave(arms: list[Arm], rounds: int, epochs_per_sample: int, device: torch.device,
               rotate: bool = True) -> None:
    """One untimed warm-up epoch per arm (allocator, kernels, SQLite tables, TensorBoard files),
    then `rounds` rounds in which every arm trains the same epochs (the same batches in the same
    order). `rotate`: round r starts at arm r (and odd rounds run backwards); otherwise the
    rounds alternate forward and backward."""
    for arm in arms:
        sample(arm, 0, 1, device)
        arm.wall.clear(), arm.cpu.clear(), arm.part_ms.clear()
    epoch = 1
    for r in range(rounds):
        if rotate:
            order = arms[r % len(arms):] + arms[:r % len(arms)]
            if r % 2:
                order.reverse()
        else:
            order = arms if r % 2 == 0 else arms[::-1]
        for arm in order:
            sample(arm, epoch, epochs_per_sample, device)
        epoch += epochs_per_sample


def summary(values: list[float]) -> dict:
    """Median, 25th/75th percentiles, min and max of a series."""
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 3
    return {"median": statistics.median(ordered), "p25": q[0], "p75": q[2],
            "min": ordered[0], "max": ordered[-1]}


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median of ``values`` (order statistics whose ranks
    come from the Binomial(n, 1/2) distribution): where the true median of the per-round ratios
    lies with probability ``level``, whatever the shape of the machine's noise."""
    ordered = sorted(values)
    n, tail, j = len(ordered), 0.0, 0
    while j < n and tail + math.comb(n, j) / 2 ** n <= (1.0 - level) / 2:
        tail += math.comb(n, j) / 2 ** n
        j += 1
    return (ordered[0], ordered[-1]) if j == 0 else (ordered[j - 1], ordered[n - j])


def paired_ratio(arm: Arm, ref: Arm, label: str, goal: float | None = None, strict: bool = False) -> dict:
    """`arm` over `ref`: the median of the per-round wall-time ratios (with their spread) and of the
    CPU-time ratios. With a `goal`, `passed` says ratio <= goal (< goal when `strict`)."""
    paired = [x / y for x, y in zip(arm.wall, ref.wall)]
    stats = summary(paired)
    entry = {"arm": arm.name, "reference": ref.name, "label": label, "ratio": stats["median"],
             "per_round": paired, **{k: stats[k] for k in ("p25", "p75", "min", "max")},
             "cpu_ratio": (statistics.median(x / y for x, y in zip(arm.cpu, ref.cpu))
                           if arm.cpu and ref.cpu else None)}
    if goal is not None:
        entry.update(goal=goal, passed=stats["median"] < goal if strict else stats["median"] <= goal)
    return entry


def load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def settings(rounds: int, epochs_per_sample: int, threads: int, device, load: list) -> dict:
    """The results' `settings`: sizes, versions and the load before and after."""
    return {"rounds": rounds, "epochs_per_sample": epochs_per_sample, "threads": threads,
            "device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "load_average": load}


def busy_note(results: dict, what: str = "the CPU-time ratios are") -> list[str]:
    """A note for the table when the load exceeded the CPU count (wall-clock ratios are noisy then)."""
    load = results["settings"]["load_average"]
    cpus = results["settings"]["cpu_count"] or 1
    if load[0] is None or max(load) <= cpus:
        return []
    return [f"\nnote: the machine was busy (load average {max(load):.1f} on {cpus} CPUs); "
            f"wall-clock ratios are noisy, {what} the steadier estimate"]


def run_and_report(run_fn, prefix: str, quick: bool, table_fn, out: str | Path) -> dict:
    """Run a benchmark in a scratch directory, print its table and write its JSON; shared by
    every `make bench` entry point so they report the same way."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        results = run_fn(Path(tmp))
    results["settings"].update(quick=quick, seconds=round(time.perf_counter() - started, 1))
    print()
    print(table_fn(results))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out} ({results['settings']['seconds']:.0f} s)")
    return results


def bench_parser(prog: str, description: str, full: dict, quick: dict, out: str,
                 quick_help: str = "short smoke run (the numbers mean little)") -> argparse.ArgumentParser:
    """The options every `make bench` entry point takes (presets `full` / `quick`)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--rounds", type=int,
                        help=f"interleaved rounds (default {full['rounds']}, quick {quick['rounds']})")
    parser.add_argument("--epochs-per-sample", type=int,
                        help=f"epochs per timed sample (default {full['epochs_per_sample']}, "
                             f"quick {quick['epochs_per_sample']})")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads for every arm (default 1: small models run fastest "
                             "and steadiest on one thread)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--out", default=out, help="where the JSON results go")
    return parser


def preset_sizes(args: argparse.Namespace, full: dict, quick: dict) -> tuple[int, int]:
    """(rounds, epochs per sample): the command line's, else the chosen preset's."""
    preset = quick if args.quick else full
    return args.rounds or preset["rounds"], args.epochs_per_sample or preset["epochs_per_sample"]


def cli(parser: argparse.ArgumentParser, full: dict, quick: dict, prefix: str, table_fn, run_fn,
        argv: list[str] | None = None) -> int:
    """A bench module's `main`: parse `argv` with `parser` (from `bench_parser`), then
    `run_fn(args, rounds, epochs_per_sample, scratch_dir)` and report it with `table_fn`."""
    args = parser.parse_args(argv)
    rounds, epochs = preset_sizes(args, full, quick)
    run_and_report(lambda tmp: run_fn(args, rounds, epochs, tmp), prefix, args.quick, table_fn, args.out)
    return 0
