"""The WCBC-IOD notebook runs end to end at the smoke budget and writes finite results: every
arm's old/new/harmonic accuracy against fine-tuning, the comparisons with feature KD and logit
KD, and the old-classes-only ablation."""
from __future__ import annotations

import math


def test_p02_wcbc_iod_smoke(smoke_results):
    payload = smoke_results("p02_wcbc_iod")
    by_baseline: dict[tuple[str, str], set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1  # correlations may be undefined (None) on a tiny untrained smoke run
        by_baseline.setdefault((row["metric"], row["baseline"]), set()).add(row["arm"])
        if "acc" in row["metric"] or "harmonic" in row["metric"]:
            assert row["mean"] is not None and math.isfinite(row["mean"]) and 0.0 <= row["mean"] <= 1.0
    arms = {"finetune", "logit_kd", "feature_mse", "bc", "wc", "bc_wc", "bc_wc_old", "joint"}
    for metric in ("test/student_old_acc", "test/student_new_acc", "test/student_harmonic"):
        assert by_baseline[(metric, "finetune")] == arms
    assert by_baseline[("test/student_old_acc", "feature_mse")] == {"feature_mse", "bc_wc", "bc", "wc", "bc_wc_old"}
    assert by_baseline[("test/student_harmonic", "logit_kd")] == {"logit_kd", "bc_wc", "bc_wc_old"}
    assert "load average" in payload["notes"]
