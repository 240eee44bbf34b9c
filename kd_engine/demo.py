"""The built-in demo: shipped digits checkpoints and the recorded runs the dashboard opens on.

`kdw demo --force` retrains the checkpoints from `configs/digits_teacher.yaml` and
`configs/demo_kd.yaml`; without --force only what is missing is made, so `make dashboard`
costs a few seconds once the demo runs exist.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from kd_engine.config import load_config
from kd_engine.store import list_runs

log = logging.getLogger("kdw")
ROOT = Path(__file__).resolve().parent.parent
DEMO_RUNS = ("demo_kd", "demo_scratch")


def _train(config: str, runs_dir: str, overrides: list[str] | None = None) -> Path:
    from kd_engine.run import train

    cfg = load_config(ROOT / "configs" / config, [f"runs_dir={runs_dir}", *(overrides or [])])
    return train(cfg)


def _finished(runs_dir: str, name: str) -> bool:
    runs = list_runs(runs_dir)
    return bool(((runs["name"] == name) & (runs["status"] == "finished")).any())


def make_demo(runs_dir: str = "runs", checkpoints: str = "checkpoints", force: bool = False) -> None:
    ckpt = Path(checkpoints)
    teacher, student = ckpt / "digits_teacher.safetensors", ckpt / "digits_student.safetensors"
    teacher_override = f"teacher.checkpoint={teacher}"
    if force or not teacher.is_file():
        log.info("training the demo teacher -> %s", teacher)
        run_dir = _train("digits_teacher.yaml", runs_dir)
        ckpt.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / "checkpoints" / "student.safetensors", teacher)
    if force or not student.is_file():
        log.info("training the demo student -> %s", student)
        run_dir = _train("demo_kd.yaml", runs_dir, [teacher_override])
        shutil.copyfile(run_dir / "checkpoints" / "student.safetensors", student)
    for name in DEMO_RUNS:
        if not _finished(runs_dir, name):
            log.info("recording the demo run %s", name)
            _train(f"{name}.yaml", runs_dir, [teacher_override])
    log.info("demo ready under %s", runs_dir)
