"""The UniKD notebook runs end to end at the smoke budget and writes finite results: per pair,
every arm's (and the teacher's) test mAP and AP50 against scratch, and UniKD against feature
imitation."""
from __future__ import annotations

import math


def test_p24_unikd_smoke(smoke_results):
    payload = smoke_results("p24_unikd")
    by_metric: dict[tuple[str, str], set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1 and row["mean"] is not None and math.isfinite(row["mean"])
        assert 0.0 <= row["mean"] <= 1.0
        by_metric.setdefault((row["metric"], row["baseline"]), set()).add(row["arm"])
    for metric in ("test/student_mAP", "test/student_AP50"):
        for pair in ("homogeneous", "heterogeneous"):
            assert by_metric[(metric, "scratch")] >= {"scratch", f"fpn_mimic@{pair}", f"unikd@{pair}", f"teacher@{pair}"}
            assert by_metric[(metric, f"fpn_mimic@{pair}")] == {f"fpn_mimic@{pair}", f"unikd@{pair}"}
    assert "load average" in payload["notes"]
