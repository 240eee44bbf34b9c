"""The BOSS notebook (paper 23) runs end to end at the smoke budget and writes finite results."""
from __future__ import annotations

import math


def test_p23_boss_smoke(smoke_results):
    payload = smoke_results("p23_boss")
    by_metric: dict[str, set[str]] = {}
    for row in payload["rows"]:
        assert row["baseline"] == "bo" and row["n"] == 1
        assert row["mean"] is not None and math.isfinite(row["mean"]) and 0.0 <= row["mean"] <= 1.0
        by_metric.setdefault(row["metric"], set()).add(row["arm"])
    assert by_metric == {"test_acc_of_best_val": {"bo", "boss", "sd"}, "best_val_acc": {"bo", "boss", "sd"}}
