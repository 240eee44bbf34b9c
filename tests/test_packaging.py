"""The engine is a library: it imports and trains without the dashboard's and notebooks' packages,
and its wheel installs into a fresh venv that holds only the core requirements."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXTRAS_ONLY = ("streamlit", "plotly", "papermill", "nbformat", "jupyterlab", "playwright", "pytest")
CONFIG = textwrap.dedent("""
    name: wheel_kd
    epochs: 1
    threads: 1
    data: {name: digits, split_seed: 0}
    teacher: {name: resnet, params: {width: 8}, train: {epochs: 1}}
    student: {name: resnet, params: {width: 4}}
    distill: {terms: [{loss: kd}]}
    record: {tensorboard: false}
    """)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


@pytest.mark.slow
def test_engine_trains_and_loads_a_student_without_the_extras(tmp_path):
    """Block every extras-only package at import time, then train a digits run and load its student."""
    script = textwrap.dedent(f"""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {EXTRAS_ONLY!r}:
                    raise ImportError(f"blocked extra: {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        from kd_engine.config import load_config
        from kd_engine.run import train
        import kd_engine
        cfg = load_config({str(tmp_path / "c.yaml")!r}, ["runs_dir={tmp_path / 'runs'}", "cache_dir={tmp_path / 'cache'}",
                          "teacher.params.width=4", "record.instances=false"])
        run = train(cfg)
        print(type(kd_engine.load_student(run)).__name__)
        print(sorted(m for m in sys.modules if m.split(".")[0] in {EXTRAS_ONLY!r}))
        """)
    (tmp_path / "c.yaml").write_text(CONFIG)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          env={**_clean_env(), "PYTHONPATH": str(ROOT)}, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-3:] == ["ResNet", "[]", ""]


def _core_venv_key() -> str:
    """Core requirements and the lock decide what the fresh venv holds (not this checkout's code)."""
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    text = "\n".join(core) + (ROOT / "constraints.txt").read_text() + sys.version
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, env=_clean_env(), **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, command))}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}"
    return done


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_wheel_installs_into_a_fresh_venv_with_only_core_requirements(tmp_path):
    """Build the wheel, install it with its core requirements (locked by constraints.txt) into a
    venv without system site-packages, and distil on digits through the installed `kdw`.

    The venv is kept under ~/.cache/kdw (keyed by the core requirements and the lock), because
    its first creation unpacks torch (about 7 minutes and 6 GB on the 2-core machine); each run
    reinstalls this checkout's wheel into it."""
    dist, source = tmp_path / "dist", tmp_path / "source"
    # Built from a copy: an in-tree build leaves build/ and *.egg-info in the checkout.
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "runs", ".kdw_cache", "artifacts", "__pycache__"))
    offline_build = ["--no-build-isolation"] if _has("setuptools") else []  # this venv's setuptools
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source), *offline_build])
    (wheel,) = dist.glob("kd_workbench-*.whl")
    cache = Path(os.environ.get("KDW_WHEEL_VENV_DIR", Path.home() / ".cache" / "kdw" / "wheel-venvs"))
    venv = cache / _core_venv_key()
    python = venv / "bin" / "python"
    if not (venv / ".complete").is_file():
        _run([sys.executable, "-m", "venv", "--clear", str(venv)])
        _run([str(python), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), str(wheel)],
             timeout=2000)
        (venv / ".complete").write_text(str(wheel.name))
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)])
    _run([str(python), "-m", "pip", "check"])

    probe = _run([str(python), "-c", textwrap.dedent(f"""
        import importlib.util, sys, kd_engine
        print(kd_engine.__file__)
        print([m for m in {EXTRAS_ONLY!r} if importlib.util.find_spec(m)])
        print(sys.prefix != sys.base_prefix, any('site-packages' in p and not p.startswith(sys.prefix) for p in sys.path))
        """)], cwd=tmp_path).stdout.splitlines()
    assert probe[0].startswith(str(venv)), probe  # the installed package, not this checkout
    assert probe[1:] == ["[]", "True False"], probe

    (tmp_path / "c.yaml").write_text(CONFIG)
    train = _run([str(venv / "bin" / "kdw"), "train", "c.yaml", "--runs-dir", "runs",
                  "--set", "cache_dir=cache"], cwd=tmp_path, timeout=900)
    run_dir = Path(train.stdout.strip().splitlines()[-1])
    check = _run([str(python), "-c", textwrap.dedent(f"""
        import kd_engine
        from kd_engine.store import open_run
        run = open_run({str(run_dir)!r})
        acc = run.final_metrics()["test/student_acc"]
        print(run.status(), type(kd_engine.load_student(run)).__name__, 0.0 <= acc <= 1.0)
        """)], cwd=tmp_path)
    assert check.stdout.split() == ["finished", "ResNet", "True"]


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
