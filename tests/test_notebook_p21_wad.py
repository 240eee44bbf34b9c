"""The WAD notebook (paper 21) runs end to end at the smoke budget and writes finite results."""
from __future__ import annotations

import math


def test_p21_wad_smoke(smoke_results):
    payload = smoke_results("p21_wad")
    by_metric: dict[str, set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1 and row["mean"] is not None and math.isfinite(row["mean"])
        by_metric.setdefault(row["metric"], set()).add(row["arm"])
    arms = {f"{a}@m{m}" for a in ("supervised", "unweighted", "wad", "wad_rounds") for m in (0.3, 0.6)}
    assert by_metric["test/student_acc"] == arms
    assert by_metric["train/weight_auroc_known_vs_unknown"] == {"chance", "wad_weight@m0.3", "wad_weight@m0.6"}
    assert all(0.0 <= r["mean"] <= 1.0 for r in payload["rows"] if r["metric"] != "test/acc_gap_wad_minus_unweighted")
