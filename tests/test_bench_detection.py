"""`python -m kd_engine.bench_detection --quick` runs end to end and writes AID's step-time ratio
over base distillation (speed is not judged here: the benchmark itself, `make bench`, reports it)."""
from __future__ import annotations

import json
import math
import subprocess

import pytest

from conftest import PYTHON, subprocess_env

pytestmark = pytest.mark.slow


def _positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_detection_bench_writes_positive_finite_ratio(tmp_path):
    out = tmp_path / "bench" / "detection.json"
    proc = subprocess.run([PYTHON, "-m", "kd_engine.bench_detection", "--quick", "--out", str(out)],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(out.read_text())

    ratio = results["ratios"]["aid_vs_base"]
    for field in ("ratio", "p25", "p75", "min", "max", "cpu_ratio"):
        assert _positive_finite(ratio[field]), (field, ratio[field])
    assert len(ratio["per_round"]) == results["settings"]["rounds"]
    assert ratio["goal"] == 1.03 and isinstance(ratio["passed"], bool)
    for arm, strategy in (("base", "uniform"), ("aid", "aid")):
        assert results["arms"][arm]["weighting"]["strategy"] == strategy
        assert _positive_finite(results["arms"][arm]["median"]), arm
        assert _positive_finite(results["arms"][arm]["cpu_median"]), arm
    assert results["settings"]["quick"] is True
    assert "AID vs base distillation" in proc.stdout
