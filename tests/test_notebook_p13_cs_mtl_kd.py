"""The CS-MTL-KD notebook runs end to end at the smoke budget and writes finite results: every
main arm's mIoU, depth RMSE, edge F1 and Δ_MTL against no KD and against KL KD."""
from __future__ import annotations

import math


def test_p13_cs_mtl_kd_smoke(smoke_results):
    payload = smoke_results("p13_cs_mtl_kd")
    by_metric: dict[tuple[str, str], set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1 and row["mean"] is not None and math.isfinite(row["mean"])
        by_metric.setdefault((row["metric"], row["baseline"]), set()).add(row["arm"])
    for metric in ("test/student_mIoU", "test/student_rmse", "test/student_edge_f1", "test/student_delta_mtl"):
        assert by_metric[(metric, "no_kd")] == {"no_kd", "kl", "cs", "cs_alt"}
        assert by_metric[(metric, "kl")] == {"kl", "cs", "cs_alt"}
    deltas = {r["arm"]: r["mean"] for r in payload["rows"]
              if r["metric"] == "test/student_delta_mtl" and r["baseline"] == "no_kd"}
    assert deltas["no_kd"] == 0.0  # the baseline against itself
    assert all(0.0 <= r["mean"] <= 1.0 for r in payload["rows"] if r["metric"] == "test/student_mIoU")
    assert "load average" in payload["notes"] and "no verdict" in payload["notes"]
