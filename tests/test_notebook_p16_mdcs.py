"""The MDCS notebook (paper 16) runs end to end at the smoke budget and writes finite results."""
from __future__ import annotations

import math

ARMS = {"single_ce", "experts_ce", "diversity", "no_cis", "mdcs"}


def test_p16_mdcs_smoke(smoke_results):
    payload = smoke_results("p16_mdcs")
    by_metric: dict[str, set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1 and row["mean"] is not None and math.isfinite(row["mean"])
        assert 0.0 <= row["mean"] <= 1.0
        by_metric.setdefault(row["metric"], set()).add(row["arm"])
    for metric in ("test/balanced_acc", "test/many_acc", "test/medium_acc", "test/few_acc"):
        assert by_metric[metric] == ARMS
    assert by_metric["test/expert_disagreement"] == ARMS - {"single_ce"}
