"""The AID notebook runs end to end at the smoke budget and writes, for both detector pairs and
both settings (a disjoint teacher with clean labels, and noisy labels), a row with a finite mAP
and AP50 for every arm, the controls, the teacher, the weight spread and the AUROC of 1 − w
against the injected label noise (paired against chance)."""
from __future__ import annotations

import math

ARMS = {"clean": {"scratch", "base", "aid"}, "noisy": {"scratch", "base", "aid", "aid_shuffled", "aid_mean"}}
PAIRS = ("fcos", "frc")


def test_aid_smoke(smoke_results):
    payload = smoke_results("aid")
    arms: dict[tuple[str, str], set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1
        assert row["mean"] is not None and math.isfinite(row["mean"])
        if row["metric"].startswith("test/"):
            assert 0.0 <= row["mean"] <= 1.0
        arms.setdefault((row["metric"], row["baseline"]), set()).add(row["arm"])
    for metric in ("test/student_mAP", "test/student_AP50"):
        for key in PAIRS:
            for setting, names in ARMS.items():
                assert arms[(metric, f"{key}_{setting}_base")] == {f"{key}_{setting}_{a}" for a in names}
            for ctrl in ("aid_mean", "aid_shuffled"):
                assert arms[(metric, f"{key}_noisy_{ctrl}")] == {f"{key}_noisy_aid", f"{key}_noisy_{ctrl}"}
    for key in PAIRS:
        assert arms[("test/student_mAP", f"{key}_teacher")] == {f"{key}_teacher"}
        assert arms[("train/noise_auroc_image", "chance")] >= {f"{key}_noisy_aid", f"{key}_noisy_aid_shuffled"}
        for setting in ARMS:
            for stat in ("mean", "std", "p5", "p95"):
                assert f"{key}_{setting}_aid" in arms[(f"train/aid_weight_{stat}", None)]
    auroc = [r for r in payload["rows"] if r["metric"] == "train/noise_auroc_image"]
    assert auroc and all(0.0 <= r["mean"] <= 1.0 and math.isclose(r["diff_mean"], r["mean"] - 0.5) for r in auroc)
    assert "constant-mean" in payload["notes"] or "aid_mean" in payload["notes"]
