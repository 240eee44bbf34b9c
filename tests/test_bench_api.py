"""`make bench`'s API entry: the quick mode runs both arms and their losses agree step for step;
the agreement check catches a loop that trains something else."""
from __future__ import annotations

import json

import pytest
import torch

from kd_engine import bench_api


@pytest.mark.slow  # trains eight digits epochs (as tests/test_bench.py, the engine's quick bench)
def test_quick_mode_runs_and_the_losses_agree(tmp_path):
    out = tmp_path / "api.json"
    assert bench_api.main(["--quick", "--rounds", "1", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    steps = results["workload"]["steps_per_epoch"]
    assert results["losses"]["steps"] == 2 * steps  # the warm-up epoch and one round, per arm
    assert 0.0 <= results["losses"]["max_relative_deviation"] <= bench_api.LOSS_RTOL
    assert set(results["arms"]) == {"bare", "api", "api_norec", "bare_again"} and results["ratio"]["ratio"] > 0
    assert results["noise_floor"]["ratio"] > 0  # the A/A arm: the machine's resolution
    assert results["ratio"]["passed"] == (results["ratio"]["ratio"] <= bench_api.GOAL)


def test_the_loss_check_names_the_first_step_that_differs():
    bare = [torch.tensor(v, dtype=torch.float64) for v in (2.0, 1.5, 1.2, 1.0)]
    assert bench_api.check_losses(bare, [v * (1 + 1e-6) for v in bare]) == pytest.approx(1e-6, rel=1e-3)
    with pytest.raises(AssertionError, match="differ at step 2: bare 1.2, API 1.3"):
        bench_api.check_losses(bare, [bare[0], bare[1], torch.tensor(1.3), bare[3]])
    with pytest.raises(AssertionError, match="differ at step 1"):
        bench_api.check_losses(bare, [bare[0], torch.tensor(float("nan")), *bare[2:]])
    with pytest.raises(AssertionError, match="4 bare steps against 3 API steps"):
        bench_api.check_losses(bare, bare[:3])
