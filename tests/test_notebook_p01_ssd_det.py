"""The SSD-Det notebook runs end to end at the smoke budget and writes finite results: every arm's
test and training-annotation IoU against the noisy boxes, and the C-vs-B and D-vs-C steps."""
from __future__ import annotations

import math


def test_p01_ssd_det_smoke(smoke_results):
    payload = smoke_results("p01_ssd_det")
    by_metric: dict[str, set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1 and row["mean"] is not None and math.isfinite(row["mean"])
        assert 0.0 <= row["mean"] <= 1.0
        by_metric.setdefault(row["metric"], set()).add(row["arm"])
    arms = {"noisy@0.4", "mil@0.4", "spsd@0.4", "spsd_sisd@0.4"}
    assert by_metric["test/student_pseudo_iou"] == arms
    assert by_metric["train/student_pseudo_iou"] == arms
    baselines = {row["baseline"] for row in payload["rows"]}
    assert baselines == {"noisy@0.4", "mil@0.4", "spsd@0.4"}
    assert "load average" in payload["notes"] and "reconstruction" in payload["title"]
