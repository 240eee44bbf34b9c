"""The AdaSim notebook (paper 14) runs end to end at the smoke budget and writes finite results."""
from __future__ import annotations

import math

ARMS = {"dino", "naive_nn", "adasim"}


def test_p14_adasim_smoke(smoke_results):
    payload = smoke_results("p14_adasim")
    by_metric: dict[str, set[str]] = {}
    for row in payload["rows"]:
        assert row["baseline"] == "dino" and row["n"] == 1
        assert row["mean"] is not None and math.isfinite(row["mean"])
        by_metric.setdefault(row["metric"], set()).add(row["arm"])
    assert by_metric["test/knn_acc"] == ARMS | {"pixels"}
    assert by_metric["test/linear_probe_acc"] == ARMS | {"pixels"}
    assert by_metric["test/embedding_std"] == ARMS
    assert by_metric["bootstrap_rate@last_epoch"] == ARMS
    assert all(0.0 <= r["mean"] <= 1.0 for r in payload["rows"] if r["metric"].endswith("_acc"))
