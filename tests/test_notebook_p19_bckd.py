"""The BCKD notebook runs end to end at the smoke budget and writes finite results: every arm's
mAP and AP50 against the student alone (and the teacher's, for reference), and the two direct
pairings binary-vs-softmax KD and full-vs-classification-only BCKD."""
from __future__ import annotations

import math


def test_p19_bckd_smoke(smoke_results):
    payload = smoke_results("p19_bckd")
    by_metric: dict[tuple[str, str], set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1 and row["mean"] is not None and math.isfinite(row["mean"])
        assert 0.0 <= row["mean"] <= 1.0
        by_metric.setdefault((row["metric"], row["baseline"]), set()).add(row["arm"])
    arms = {"student", "softmax_kd", "bckd_cls", "bckd", "teacher"}
    assert by_metric[("test/student_mAP", "student")] == arms
    assert by_metric[("test/student_AP50", "student")] == arms
    assert by_metric[("test/student_mAP", "softmax_kd")] == {"softmax_kd", "bckd_cls"}
    assert by_metric[("test/student_mAP", "bckd_cls")] == {"bckd_cls", "bckd"}
    assert "no verdict is possible" in payload["notes"] and "load average" in payload["notes"]
