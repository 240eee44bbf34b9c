"""The SDD notebook (paper 8) runs end to end at the smoke budget and writes finite results."""
from __future__ import annotations

import math


def test_p08_sdd_smoke(smoke_results):
    payload = smoke_results("p08_sdd")
    by_metric: dict[str, set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1 and row["mean"] is not None and math.isfinite(row["mean"])
        by_metric.setdefault(row["metric"], set()).add(row["arm"])
    arms = ({f"{p}@λ{lam}" for p in ("random", "argmin_H") for lam in ("0.1", "1", "10")}
            | {"argmax_H@λ1", "oracle"} | {f"t={t}@λ1" for t in (30, 70, 110, 150, 190)})
    assert by_metric["test/student_edit_success"] == arms
    assert by_metric["test/student_identity_l2"] == arms
    assert by_metric["test/tradeoff_gain_vs_random"] == {"argmin_H", "zero"}
    assert by_metric["val/spearman_negH_vs_oracle_success"] == {"spearman", "zero"}
    for row in payload["rows"]:
        if row["metric"] == "test/student_edit_success":
            assert 0.0 <= row["mean"] <= 1.0
        if row["metric"] == "val/spearman_negH_vs_oracle_success":
            assert -1.0 <= row["mean"] <= 1.0
