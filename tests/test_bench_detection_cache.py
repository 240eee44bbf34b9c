"""`make bench` (detection) reports a distillation step with the teacher-pass cache against the
same step without it, side by side (speed itself is not judged here)."""
from __future__ import annotations

import json
import math
import subprocess

import pytest

from conftest import PYTHON, subprocess_env

pytestmark = pytest.mark.slow


def test_quick_bench_reports_cached_against_live_teacher(tmp_path):
    out = tmp_path / "detection.json"
    proc = subprocess.run([PYTHON, "-m", "kd_engine.bench_detection", "--quick", "--out", str(out)],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(out.read_text())
    cached = results["ratios"]["cached_vs_live"]
    assert (cached["arm"], cached["reference"]) == ("aid_cached", "aid")
    assert all(math.isfinite(cached[k]) and cached[k] > 0 for k in ("ratio", "cpu_ratio"))
    assert len(cached["per_round"]) == results["settings"]["rounds"]
    assert {"aid", "aid_cached"} <= set(results["arms"])
    assert "AID, teacher pass cached" in proc.stdout
