"""The Auto-KD notebook (paper 3) runs end to end at the smoke budget and writes finite results."""
from __future__ import annotations

import math


def test_p03_autokd_smoke(smoke_results):
    payload = smoke_results("p03_autokd")
    by_metric: dict[str, set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1 and row["mean"] is not None and math.isfinite(row["mean"])
        by_metric.setdefault(row["metric"], set()).add(row["arm"])
    assert by_metric["best_reward"] == {"mcts", "random"}
    assert by_metric["chosen_proxy_test_acc"] == {"mcts", "random"}
    assert by_metric["test/student_acc"] == {"student", "kd", "fitnet", "mcts_best", "random_best"}
    assert all(r["mean"] < 0 for r in payload["rows"] if r["metric"] == "best_reward")  # −val loss
