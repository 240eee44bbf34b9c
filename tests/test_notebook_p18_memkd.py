"""The MemKD notebook runs end to end at the smoke budget and writes finite results: every arm's
image, per-kind and pixel AUROC, the memkd-vs-control comparison and the per-digit rows."""
from __future__ import annotations

import math


def test_p18_memkd_smoke(smoke_results):
    payload = smoke_results("p18_memkd")
    by_metric: dict[str, set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1 and row["mean"] is not None and math.isfinite(row["mean"])
        by_metric.setdefault(row["metric"], set()).add(row["arm"])
    arms = {"stpm", "memkd", "memory_only", "memkd_sharp"}
    for metric in ("test/student_auroc_other_digit", "test/student_auroc_pasted_patch", "test/student_pixel_auroc"):
        assert by_metric[metric] == arms
    assert by_metric["test/student_image_auroc"] == arms | {f"{a}@8" for a in arms}
    assert by_metric["test/gain_pasted_minus_gain_other"] == {"gain on other digits", "gain on pasted patches"}
    assert all(0.0 <= r["mean"] <= 1.0 for r in payload["rows"] if "auroc" in r["metric"])
    assert "load average" in payload["notes"]
