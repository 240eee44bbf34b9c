"""The DistillBEV notebook runs end to end at the smoke budget and writes finite results: mAP and
AP per class for every arm against no KD, the weighted-vs-uniform and +false-positive comparisons
and the scale mask's small-vs-large gain."""
from __future__ import annotations

import math


def test_p26_distillbev_smoke(smoke_results):
    payload = smoke_results("p26_distillbev")
    by_metric: dict[str, set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1 and row["mean"] is not None and math.isfinite(row["mean"])
        by_metric.setdefault(row["metric"], set()).add(row["arm"])
    arms = {"no_kd", "uniform", "weighted", "weighted_fp", "no_scale"}
    for metric in ("test/student_mAP", "test/student_AP_small", "test/student_AP_large"):
        assert arms <= by_metric[metric]
    assert by_metric["test/scale_gain"] == {"scale gain on small", "scale gain on large"}
    assert all(0.0 <= r["mean"] <= 1.0 for r in payload["rows"] if "AP" in r["metric"])
    assert "load average" in payload["notes"] and "reconstruction" in payload["title"]
