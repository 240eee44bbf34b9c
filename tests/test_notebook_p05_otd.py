"""The OTD notebook (paper 5, a reconstruction) runs end to end at the smoke budget and writes
finite results."""
from __future__ import annotations

import math

ARMS = {"source_only", "self_train", "stream1", "stream2", "both"}


def test_p05_otd_smoke(smoke_results):
    payload = smoke_results("p05_otd")
    assert "reconstruction" in payload["title"].lower() and "reconstruction" in payload["notes"].lower()
    by_metric: dict[str, set[str]] = {}
    for row in payload["rows"]:
        assert row["baseline"] == "self_train" and row["n"] == 1
        assert row["mean"] is not None and math.isfinite(row["mean"]) and 0.0 <= row["mean"] <= 1.0
        by_metric.setdefault(row["metric"], set()).add(row["arm"])
    assert by_metric["test/H"] == ARMS and by_metric["test/novel_acc"] == ARMS
