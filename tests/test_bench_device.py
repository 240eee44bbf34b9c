"""`kdw bench --device cpu|cuda`: the CIFAR-100 KD config on FakeData through the engine beside a
bare loop, images/s and peak GPU memory side by side. On the CPU at a tiny size (one step per arm
and round); the GPU run is in tests/test_cuda_path.py."""
from __future__ import annotations

import json

import pytest
import torch

from kd_engine.cli import main


def test_bench_on_the_cpu_reports_both_arms(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--device", "cpu", "--quick", "--images", "4", "--batch-size", "4", "--rounds", "1",
                 "--threads", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["workload"]["config"] == "configs/cifar100/kd/resnet32x4_resnet8x4.yaml"
    assert (results["workload"]["teacher"], results["workload"]["student"]) == ("resnet32x4", "resnet8x4")
    assert set(results["arms"]) == {"bare", "engine"}
    for arm in results["arms"].values():
        assert arm["images_per_s"] > 0 and arm["peak_gpu_memory_mb"] is None  # no GPU counter on the CPU
    assert results["settings"]["device"] == "cpu" and len(results["settings"]["load_average"]) == 2
    table = capsys.readouterr().out
    assert "images/s" in table and "n/a (CPU)" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_bench_on_cuda_without_a_gpu_is_one_line(capsys):
    assert main(["bench", "--device", "cuda", "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: device: 'cuda' requested but no CUDA device")
