"""The L2D notebook (paper 25) runs end to end at the smoke budget and writes finite results."""
from __future__ import annotations

import math

ARMS = {"bce", "softmax_kd", "mld", "mld_led", "mld_led_ref", "teacher"}


def test_p25_l2d_smoke(smoke_results):
    payload = smoke_results("p25_l2d")
    by_metric: dict[str, set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1 and row["mean"] is not None and math.isfinite(row["mean"])
        assert 0.0 <= row["mean"] <= (1.0 if row["metric"].startswith("test/student_") else float("inf"))
        by_metric.setdefault(row["metric"], set()).add(row["arm"])
    assert by_metric["test/student_map"] == ARMS
    assert by_metric["test/student_micro_f1"] == ARMS
    assert by_metric["test/class_structure_gap"] == by_metric["test/instance_structure_gap"] == ARMS - {"teacher"}
