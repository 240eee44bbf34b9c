"""The DOT notebook (paper 22) runs end to end at the smoke budget and writes finite results."""
from __future__ import annotations

import math

ARMS = {"ce", "kd_sgd", "kd_dot", "dot_d0.025", "dot_d0.05", "dot_d0.09"}


def test_p22_dot_smoke(smoke_results):
    payload = smoke_results("p22_dot")
    rows = payload["rows"]
    by_metric: dict[str, set[str]] = {}
    for row in rows:
        assert row["baseline"] == "kd_sgd" and row["n"] == 1
        assert row["mean"] is not None and math.isfinite(row["mean"])
        by_metric.setdefault(row["metric"], set()).add(row["arm"])
    assert by_metric["test/student_acc"] == ARMS
    assert by_metric["train/student_loss@last_epoch"] == ARMS
    assert by_metric["train/term/kd@last_epoch"] == ARMS - {"ce"}
    assert all(0.0 <= r["mean"] <= 1.0 for r in rows if r["metric"] == "test/student_acc")


def test_loss_trajectory_figure():
    import pandas as pd

    from workbench.figures import loss_trajectory

    rows = [{"arm": arm, "seed": 0, "epoch": e, "key": key, "value": v * (e + 1) ** -1}
            for arm in ("kd_sgd", "kd_dot") for e in range(3)
            for key, v in (("train/student_loss", 1.0), ("train/term/kd", 0.5))]
    fig = loss_trajectory(pd.DataFrame(rows), "train/student_loss", "train/term/kd")
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert len(lines) == 2 and list(lines[0].x) == [1.0, 0.5, 1.0 / 3]
