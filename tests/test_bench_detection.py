"""`python -m kd_engine.bench_detection --quick` runs end to end and writes AID's step-time ratio
over base distillation, and the teacher-pass cache's ratio against the live teacher, side by side
(speed is not judged here: the benchmark itself, `make bench`, reports it). One quick run serves
both tests."""
from __future__ import annotations

import json
import math
import subprocess

import pytest

from conftest import PYTHON, subprocess_env

pytestmark = pytest.mark.slow


def _positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bench_detection")
    out = tmp_path / "bench" / "detection.json"
    proc = subprocess.run([PYTHON, "-m", "kd_engine.bench_detection", "--quick", "--out", str(out)],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc, json.loads(out.read_text())


def test_quick_detection_bench_writes_positive_finite_ratio(quick_bench):
    proc, results = quick_bench
    ratio = results["ratios"]["aid_vs_base"]
    for field in ("ratio", "p25", "p75", "min", "max", "cpu_ratio"):
        assert _positive_finite(ratio[field]), (field, ratio[field])
    assert len(ratio["per_round"]) == results["settings"]["rounds"]
    assert ratio["goal"] == 1.03 and isinstance(ratio["passed"], bool)
    for arm, strategy in (("base", "uniform"), ("aid", "aid")):
        assert results["arms"][arm]["weighting"]["strategy"] == strategy
        assert _positive_finite(results["arms"][arm]["median"]), arm
        assert _positive_finite(results["arms"][arm]["cpu_median"]), arm
        assert results["arms"][arm]["weighting_ms_per_step"] >= 0, arm
    assert results["settings"]["quick"] is True
    assert "AID vs base distillation" in proc.stdout


def test_quick_bench_reports_cached_against_live_teacher(quick_bench):
    proc, results = quick_bench
    cached = results["ratios"]["cached_vs_live"]
    assert (cached["arm"], cached["reference"]) == ("aid_cached", "aid")
    assert all(math.isfinite(cached[k]) and cached[k] > 0 for k in ("ratio", "cpu_ratio"))
    assert len(cached["per_round"]) == results["settings"]["rounds"]
    assert {"aid", "aid_cached"} <= set(results["arms"])
    assert cached["passed"] == (cached["ratio"] < 1.0)
    assert "AID, teacher pass cached" in proc.stdout
