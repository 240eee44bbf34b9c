"""The FerKD notebook (paper 15) runs end to end at the smoke budget and writes finite results."""
from __future__ import annotations

import math

ARMS = {"kd_online", "kd_cache", "hard", "fkd", "fkd_top3", "ferkd", "ferkd_selfmix", "ferkd_tau0.1",
        "ferkd_tau0.4"}


def test_p15_ferkd_smoke(smoke_results):
    payload = smoke_results("p15_ferkd")
    by_metric: dict[str, set[str]] = {}
    for row in payload["rows"]:
        assert row["baseline"] == "fkd" and row["n"] == 1
        assert row["mean"] is not None and math.isfinite(row["mean"]) and 0.0 <= row["mean"] <= 1.0
        by_metric.setdefault(row["metric"], set()).add(row["arm"])
    assert by_metric["test/student_acc"] == ARMS
    assert by_metric["val/student_acc@epoch1"] == ARMS
    assert "reconstruction" in payload["title"]
