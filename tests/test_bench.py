"""`python -m kd_engine.bench --quick` runs end to end and writes its ratios (speed is not judged
here: the benchmark itself, `make bench`, reports it)."""
from __future__ import annotations

import json
import math
import subprocess

import pytest

from conftest import PYTHON, subprocess_env

pytestmark = pytest.mark.slow


def _positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_bench_writes_positive_finite_ratios(tmp_path):
    out = tmp_path / "bench" / "engine.json"
    proc = subprocess.run([PYTHON, "-m", "kd_engine.bench", "--quick", "--out", str(out)], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(out.read_text())

    for key in ("engine_vs_bare", "recording_on_vs_off"):
        ratio = results["ratios"][key]
        for field in ("ratio", "p25", "p75", "min", "max", "cpu_ratio"):
            assert _positive_finite(ratio[field]), (key, field, ratio[field])
        assert len(ratio["per_round"]) == results["settings"]["rounds"]
        assert ratio["goal"] == 1.05 and isinstance(ratio["passed"], bool)
    cache = results["ratios"]["kd_cache_vs_plain"]
    assert cache["goal"] == 1.10 and isinstance(cache["passed"], bool)
    assert (cache["arm"], cache["reference"]) == ("kd_cache", "plain")
    assert results["ratios"]["kd_online_vs_plain"]["reference"] == "plain"
    for key in ("kd_cache_vs_plain", "kd_online_vs_plain"):
        assert _positive_finite(results["ratios"][key]["ratio"]), key
    assert _positive_finite(results["cache_parts"]["replay"]["ms_per_step"])
    for arm in ("bare", "engine", "engine_norec", "plain", "kd_cache"):
        assert _positive_finite(results["arms"][arm]["median"]), arm
        assert _positive_finite(results["arms"][arm]["cpu_median"]), arm
    assert results["settings"]["quick"] is True
    for line in ("engine (recording on) vs bare loop", "record.instances true vs false",
                 "KD from the teacher bank vs plain student", "online KD vs plain student"):
        assert line in proc.stdout
