"""The UP-VL notebook runs end to end at the smoke budget and writes finite results: every arm's
static and moving recall, seen and held-out naming accuracy and named mIoU against motion-only,
and the held-out naming accuracy against chance."""
from __future__ import annotations

import math


def test_p11_upvl_smoke(smoke_results):
    payload = smoke_results("p11_upvl")
    by_metric: dict[str, set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1
        by_metric.setdefault(row["metric"], set()).add(row["arm"])
    arms = {"motion_only", "motion_vl", "upper_bound"}
    for key in ("recall_static", "recall_moving", "naming_acc_seen", "mIoU"):
        assert by_metric[f"test/student_{key}"] == arms, key
    assert by_metric["test/student_naming_acc_held_out"] == arms | {"chance (1/5)"}  # against baseline and chance
    for row in payload["rows"]:
        if row["metric"] != "test/student_naming_acc_held_out":
            assert row["mean"] is not None and math.isfinite(row["mean"]) and 0.0 <= row["mean"] <= 1.0
    assert any(r["arm"] == "chance (1/5)" and r["mean"] == 0.2 for r in payload["rows"])
    assert "load average" in payload["notes"] and "reconstruction" in payload["title"]
