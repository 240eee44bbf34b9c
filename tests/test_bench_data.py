"""`python -m kd_engine.bench_data --quick` runs end to end and writes what `make bench` reports:
images/s of the in-memory path and of the streaming DataLoader (0 and 2 workers) on digits, and
the default recording's share of a CIFAR-100 epoch (speed itself is not judged here)."""
from __future__ import annotations

import json
import math
import subprocess

import pytest

from conftest import PYTHON, subprocess_env

pytestmark = pytest.mark.slow


def _positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_data_bench_writes_throughput_and_recording_share(tmp_path):
    out = tmp_path / "bench" / "data.json"
    proc = subprocess.run([PYTHON, "-m", "kd_engine.bench_data", "--quick", "--out", str(out)], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(out.read_text())

    streaming = results["streaming"]
    for arm in ("memory", "stream_w0", "stream_w2", "read_memory", "read_stream_w0", "read_stream_w2"):
        entry = streaming["arms"][arm]
        assert _positive_finite(entry["images_per_s"]) and _positive_finite(entry["median"]), arm
        assert len(entry["wall_ms_per_step"]) == results["settings"]["rounds"]
    for key in ("train_stream_w0_vs_memory", "train_stream_w2_vs_memory", "read_stream_w2_vs_memory"):
        ratio = streaming["ratios"][key]
        assert _positive_finite(ratio["ratio"]) and ratio["reference"].endswith("memory"), key

    recording = results["recording"]
    assert recording["workload"]["config"] == "cifar100/kd/resnet32x4_resnet8x4.yaml"
    cifar = recording["cifar_epoch"]
    assert cifar["steps"] == 782 and cifar["goal"] == 0.03 and isinstance(cifar["passed"], bool)
    for key in ("share", "step_ms_off", "rows_ms_per_step", "write_ms_per_image", "recorder_ms_per_epoch"):
        assert _positive_finite(cifar[key]), key
    assert cifar["passed"] == (cifar["share"] <= 0.03)
    expected = (782 * cifar["rows_ms_per_step"] + 50_000 * cifar["write_ms_per_image"]
                + cifar["recorder_ms_per_epoch"]) / (782 * cifar["step_ms_off"])
    assert cifar["share"] == pytest.approx(expected)
    assert _positive_finite(recording["ratios"]["recording_on_vs_off"]["ratio"])
    assert results["settings"]["quick"] is True
    for line in ("(a) streaming against in memory", "stream_w2", "share of a CIFAR-100 epoch"):
        assert line in proc.stdout
