"""The ORC-style notebook (paper 27, a reconstruction) runs end to end at the smoke budget and
writes finite results for every arm."""
from __future__ import annotations

import math

ARMS = {"independent", "kd", "dml", "orc"}


def test_p27_orc_smoke(smoke_results):
    payload = smoke_results("p27_orc")
    assert "reconstruction" in payload["title"] and "reconstruction" in payload["notes"]
    by_baseline: dict[tuple[str, str], set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1 and row["mean"] is not None and math.isfinite(row["mean"])
        assert 0.0 <= row["mean"] <= 1.0
        by_baseline.setdefault((row["metric"], row["baseline"]), set()).add(row["arm"])
    assert by_baseline[("test/student_acc", "independent")] == ARMS
    assert by_baseline[("test/student_mean_acc", "independent")] == ARMS
    assert by_baseline[("test/student_acc", "kd")] == {"kd", "orc"}
    assert by_baseline[("test/student_acc", "dml")] == {"dml", "orc"}
