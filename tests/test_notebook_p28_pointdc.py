"""The PointDC notebook runs end to end at the smoke budget and writes finite results: matched
mIoU and oAcc of every arm against raw k-means, and the two comparisons of the claimed ordering."""
from __future__ import annotations

import math


def test_p28_pointdc_smoke(smoke_results):
    payload = smoke_results("p28_pointdc")
    by_metric: dict[str, set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1 and row["mean"] is not None and math.isfinite(row["mean"])
        assert 0.0 <= row["mean"] <= 1.0
        by_metric.setdefault(row["metric"], set()).add(row["arm"])
    arms = {"raw_kmeans", "svc_only", "cmd_only", "cmd_svc", "2-D teacher (reference)"}
    assert by_metric["test/student_oAcc"] == arms
    assert by_metric["test/student_mIoU"] == arms | {"cmd_only", "svc_only"}
    assert "load average" in payload["notes"]
