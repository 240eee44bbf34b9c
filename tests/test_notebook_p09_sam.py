"""The SAM notebook runs end to end at the smoke budget and writes finite results: every arm's
depth RMSE, abs-rel and mIoU against no_kd, each SAM arm against its own lambda = 0 control, SAM
against direct KD, and the delay structure of the cross-attention."""
from __future__ import annotations

import math


def test_p09_sam_smoke(smoke_results):
    payload = smoke_results("p09_sam")
    by_metric: dict[tuple[str, str], set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1 and row["mean"] is not None and math.isfinite(row["mean"])
        by_metric.setdefault((row["metric"], row["baseline"]), set()).add(row["arm"])
    arms = {"no_kd", "direct_kd", "sam_1", "sam_2", "control", "control_2"}
    for metric in ("test/student_rmse", "test/student_abs_rel", "test/student_mIoU"):
        assert by_metric[(metric, "no_kd")] == arms
        assert by_metric[(metric, "control")] == {"sam_1", "control"}
        assert by_metric[(metric, "control_2")] == {"sam_2", "control_2"}
    assert by_metric[("test/student_rmse", "direct_kd")] == {"direct_kd", "sam_1", "sam_2"}
    assert by_metric[("test/delay_correlation", "control")] == {"sam_1", "control"}
    assert by_metric[("test/delay_correlation", "control_2")] == {"sam_2", "control_2"}
    assert all(r["mean"] > 0 for r in payload["rows"] if r["metric"].endswith("rmse"))
    assert all(0.0 <= r["mean"] <= 1.0 for r in payload["rows"] if r["metric"].endswith("mIoU"))
    assert "load average" in payload["notes"] and "no verdict" in payload["notes"]
