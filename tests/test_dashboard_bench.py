"""`python -m workbench.bench --quick` runs end to end on a small store and writes positive, finite
timings (speed is not judged here: the benchmark itself, `make bench`, reports it)."""
from __future__ import annotations

import json
import math
import subprocess

import pytest

from conftest import PYTHON, subprocess_env

pytestmark = pytest.mark.slow

MEASURES = ("instances_first_render", "curves_live_refresh", "curves_refresh_read", "curves_refresh_figures",
            "curves_refresh_charts")


def _positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_dashboard_bench_writes_positive_finite_timings(tmp_path):
    out = tmp_path / "bench" / "dashboard.json"
    proc = subprocess.run([PYTHON, "-m", "workbench.bench", "--quick", "--instances", "300", "--epochs", "3",
                           "--out", str(out)], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(out.read_text())

    assert results["store"]["records"] == 900 and results["settings"]["quick"] is True
    for key in MEASURES:
        entry = results["measures"][key]
        for field in ("ms", "median", "min", "max"):
            assert _positive_finite(entry[field]), (key, field, entry[field])
        assert entry["samples"] and all(_positive_finite(v) for v in entry["samples"]), key
    for key, goal in (("instances_first_render", 2000.0), ("curves_live_refresh", 100.0)):
        assert results["measures"][key]["goal_ms"] == goal
        assert isinstance(results["measures"][key]["passed"], bool)
    assert results["curves"]["new_rows"] > 0 and results["curves"]["points"] > 0
    assert "Instances page first render (900 records)" in proc.stdout
    assert "Curves live refresh" in proc.stdout
