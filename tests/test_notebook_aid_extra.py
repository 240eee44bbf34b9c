"""The AID companion notebook (α sweep, cross-fitted teachers, student-features ablation,
self-distillation) runs end to end at the smoke budget and writes every comparison, the weight
spread of each weighted arm and its AUROC against the injected label noise."""
from __future__ import annotations

import math

WEIGHTED = {"aid", "aid_a1", "aid_a3", "xfit_aid_a1", "sf_aid_a1"}


def test_aid_extra_smoke(smoke_results):
    payload = smoke_results("aid_extra")
    arms: dict[tuple[str, str], set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1 and row["mean"] is not None and math.isfinite(row["mean"])
        arms.setdefault((row["metric"], row["baseline"]), set()).add(row["arm"])
    for metric in ("test/student_mAP", "test/student_AP50"):
        assert arms[(metric, "base")] == {"base", "aid", "aid_a1", "aid_a3", "sf_aid_a1"}
        assert arms[(metric, "xfit_base")] == {"xfit_base", "xfit_aid_a1"}
        assert arms[(metric, "self_base")] == {"self_base", "self_aid"}
    assert arms[("train/noise_auroc_image", "chance")] == WEIGHTED
    for stat in ("mean", "std", "p5", "p95"):
        assert arms[(f"train/aid_weight_{stat}", None)] == WEIGHTED
    spread = {r["arm"]: r["mean"] for r in payload["rows"] if r["metric"] == "train/aid_weight_std"}
    # a larger α spreads the same teacher losses further apart
    assert spread["aid_a3"] > spread["aid"]
    assert "Cross-fitted" in payload["notes"]
