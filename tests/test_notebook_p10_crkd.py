"""The Cr-KD notebook (paper 10) runs end to end at the smoke budget and writes finite results."""
from __future__ import annotations

import math

ARMS = {"uno", "crkd_nogate", "crkd", "crkd_a0.3"}
METRICS = {"train/novel_acc", "test/novel_acc", "test/known_acc", "test/all_acc"}


def test_p10_crkd_smoke(smoke_results):
    payload = smoke_results("p10_crkd")
    by_baseline: dict[tuple[str, str], set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1 and row["mean"] is not None and math.isfinite(row["mean"])
        assert 0.0 <= row["mean"] <= 1.0
        by_baseline.setdefault((row["metric"], row["baseline"]), set()).add(row["arm"])
    for metric in METRICS:
        assert by_baseline[(metric, "uno")] == ARMS
    assert by_baseline[("train/novel_acc", "crkd_nogate")] == {"crkd_nogate", "crkd"}
