"""The RDD notebook runs end to end at the smoke budget and writes finite results: every arm's
mAP and per-class AP against the student alone, the two claim comparisons and the CKA rows."""
from __future__ import annotations

import math


def test_p07_rdd_smoke(smoke_results):
    payload = smoke_results("p07_rdd")
    by_metric: dict[str, set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1 and row["mean"] is not None and math.isfinite(row["mean"])
        by_metric.setdefault(row["metric"], set()).add(row["arm"])
    arms = {"student", "full_feature", "fg_feature", "logit", "rdd"}
    for metric in ("test/student_AP_car", "test/student_AP_pedestrian", "test/student_AP_cyclist",
                   "test/student_teacher_cka"):
        assert by_metric[metric] == arms
    assert by_metric["test/student_mAP"] == arms  # the two claim comparisons are subsets of the arms
    baselines = {(r["metric"], r["baseline"]) for r in payload["rows"]}
    assert {("test/student_mAP", "fg_feature"), ("test/student_mAP", "full_feature")} <= baselines
    assert all(0.0 <= r["mean"] <= 1.0 for r in payload["rows"] if "AP" in r["metric"])
    assert "load average" in payload["notes"]
