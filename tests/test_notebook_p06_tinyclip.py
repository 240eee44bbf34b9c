"""The TinyCLIP notebook runs end to end at the smoke budget and writes finite results: every
arm's zero-shot accuracy and R@1 against scratch, and the convergence rows of inheritance."""
from __future__ import annotations

import math


def test_p06_tinyclip_smoke(smoke_results):
    payload = smoke_results("p06_tinyclip")
    by_metric: dict[str, set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1 and row["mean"] is not None and math.isfinite(row["mean"])
        assert 0.0 <= row["mean"] <= 1.0
        by_metric.setdefault(row["metric"], set()).add(row["arm"])
    arms = {"scratch", "embed_mse", "affinity", "affinity_inherit"}
    assert by_metric["test/student_r1"] == arms
    assert by_metric["test/student_zero_shot_acc"] == arms | {"affinity"}  # + inheritance vs affinity alone
    assert by_metric["val/zero_shot_acc_mean_over_epochs"] == {"affinity", "affinity_inherit"}
    assert by_metric["val/zero_shot_acc_after_epoch_1"] == arms
    assert "load average" in payload["notes"]
