"""The KD³ notebook (paper 12, a reconstruction) runs end to end at the smoke budget and writes
finite results."""
from __future__ import annotations

import math

DEFAULT = {"kd_all", "teacher_sel", "combined_sel", "+align", "kd3"}
HEAVY = {"heavy_kd_all", "heavy_teacher_sel", "heavy_combined_sel"}


def test_p12_kd3_smoke(smoke_results):
    payload = smoke_results("p12_kd3")
    assert "reconstruction" in payload["title"].lower() and "reconstruction" in payload["notes"].lower()
    arms: dict[tuple[str, str], set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1 and row["mean"] is not None and math.isfinite(row["mean"])
        arms.setdefault((row["metric"], row["baseline"]), set()).add(row["arm"])
    assert arms[("test/student_acc", "kd_all")] == DEFAULT | {"teacher"}
    assert arms[("test/student_acc", "heavy_kd_all")] == HEAVY
    assert arms[("selection_precision@last_epoch", "kd_all")] == DEFAULT
    assert all(0.0 <= r["mean"] <= 1.0 for r in payload["rows"])
