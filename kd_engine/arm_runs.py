"""Reuse finished runs and resume interrupted ones, so an experiment can span sittings.

A notebook arm at a seed is one validated config. Before training it, ``train_or_reuse`` looks in
the runs folder for a run whose config is the same (the hash of the validated config, so two
spellings of one setting match and any change of setting does not):

- a **finished** run is reused: nothing trains, and its stored final metrics give the same row;
- an **interrupted** run (stopped, failed, or stale: its trainer died) that saved a training
  state is resumed from that state (the engine's exact resume: same batches, same RNG);
- otherwise the arm trains from scratch.

A killed reproduction therefore loses at most the epoch in progress.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from kd_engine.config import ExperimentConfig, load_raw, stable_hash, validate

INTERRUPTED = ("stopped", "failed", "stale")


def config_hash(cfg: ExperimentConfig) -> str:
    """What decides a run's result: the whole validated config (runs_dir included, since runs are
    looked up there anyway)."""
    return stable_hash(cfg.model_dump(mode="json"))


def previous_run(cfg: ExperimentConfig) -> tuple[Path | None, str]:
    """The newest run under ``cfg.runs_dir`` with this config, and its status ("" if none)."""
    from kd_engine.store import open_run

    want = config_hash(cfg)
    runs = Path(cfg.runs_dir)
    candidates = sorted((p.parent for p in runs.glob("*/config.yaml")), reverse=True) if runs.is_dir() else []
    for run_dir in candidates:  # run directories start with a timestamp: newest first
        try:
            if config_hash(validate(load_raw(run_dir / "config.yaml"), str(run_dir))) != want:
                continue
            return run_dir, open_run(run_dir).status()
        except Exception:  # a half-written or corrupt run is not reusable; train afresh
            continue
    return None, ""


def train_or_reuse(cfg: ExperimentConfig, train) -> tuple[Path, str]:
    """(run directory, "reused" | "resumed" | "trained"); ``train`` is the engine's entry point."""
    run_dir, status = previous_run(cfg)
    if run_dir is not None and status == "finished":
        return run_dir, "reused"
    if run_dir is not None and status in INTERRUPTED and (run_dir / "checkpoints" / "state.pt").is_file():
        return Path(train(None, resume=run_dir, distributed=False)), "resumed"
    return Path(train(cfg, distributed=False)), "trained"


def describe_reuse(rows: list[dict[str, Any]]) -> str:
    """One line for a notebook: which arms were reused or resumed instead of trained."""
    def name(r: dict[str, Any]) -> str:
        pair = f"{r['pair']}_" if isinstance(r.get("pair"), str) else ""
        return f"{pair}{r['arm']}/s{r['seed']}"

    reused = [name(r) for r in rows if r.get("source") == "reused"]
    resumed = [name(r) for r in rows if r.get("source") == "resumed"]
    parts = []
    if reused:
        parts.append(f"reused {len(reused)} finished run(s): {', '.join(reused)}")
    if resumed:
        parts.append(f"resumed {len(resumed)} interrupted run(s): {', '.join(resumed)}")
    return "; ".join(parts) or "no earlier runs reused: every arm trained"


__all__ = ["config_hash", "describe_reuse", "previous_run", "train_or_reuse"]
