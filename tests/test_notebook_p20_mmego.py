"""The MM-Ego-KD notebook runs end to end at the smoke budget and writes finite results."""
from __future__ import annotations

import math


def test_p20_mmego_smoke(smoke_results):
    payload = smoke_results("p20_mmego")
    by_metric: dict[str, set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1 and row["mean"] is not None and math.isfinite(row["mean"])
        assert 0.0 <= row["mean"] <= 1.0
        by_metric.setdefault(row["metric"], set()).add(row["arm"])
    arms = {"ce", "best_teacher", "uniform", "mmego_softmin", "mmego_softmin_gt"}
    assert by_metric["test/student_acc"] == arms and by_metric["test/student_ece"] == arms
    assert "one seed" in payload["notes"] or "no verdict" in payload["notes"]
