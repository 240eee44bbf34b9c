"""The MDCS notebook (card §16) runs end to end at the smoke budget and writes finite results."""
from __future__ import annotations

import json
import math

from kd_engine.reproduce import reproduce

ARMS = {"single_ce", "experts_ce", "diversity", "no_cis", "mdcs"}


def test_p16_mdcs_smoke(tmp_path):
    out = reproduce(["p16_mdcs"], budget="smoke", output=tmp_path)
    payload = json.loads(out["p16_mdcs"].read_text())
    assert payload["notebook"] == "p16_mdcs" and payload["budget"] == "smoke" and payload["seeds"] == [0]
    by_metric: dict[str, set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1 and row["mean"] is not None and math.isfinite(row["mean"])
        assert 0.0 <= row["mean"] <= 1.0
        by_metric.setdefault(row["metric"], set()).add(row["arm"])
    for metric in ("test/balanced_acc", "test/many_acc", "test/medium_acc", "test/few_acc"):
        assert by_metric[metric] == ARMS
    assert by_metric["test/expert_disagreement"] == ARMS - {"single_ce"}
