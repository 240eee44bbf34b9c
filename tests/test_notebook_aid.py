"""The AID notebook (issue 3, item 8) runs end to end at the smoke budget and writes a row with a
finite mAP and AP50 for every arm of both detector pairs."""
from __future__ import annotations

import math

MAIN = {"scratch", "base", "aid", "aid_shuffled", "aid_mean"}
RET = {f"ret_{a}" for a in MAIN | {"aid_a1", "aid_a3"}}
FRC = {f"frc_{a}" for a in MAIN}
SELF = {"ret_self_base", "ret_self_aid"}


def test_aid_smoke(smoke_results):
    payload = smoke_results("aid")
    arms: dict[tuple[str, str], set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1
        assert row["mean"] is not None and math.isfinite(row["mean"]) and 0.0 <= row["mean"] <= 1.0
        arms.setdefault((row["metric"], row["baseline"]), set()).add(row["arm"])
    for metric in ("test/student_mAP", "test/student_AP50"):
        assert arms[(metric, "ret_base")] == RET
        assert arms[(metric, "frc_base")] == FRC
        assert arms[(metric, "ret_self_base")] == SELF
        for key in ("ret", "frc"):
            assert arms[(metric, f"{key}_aid_mean")] == {f"{key}_aid", f"{key}_aid_mean"}
            assert arms[(metric, f"{key}_aid_shuffled")] == {f"{key}_aid", f"{key}_aid_shuffled"}
    assert "aid_mean" in payload["notes"] or "constant-mean" in payload["notes"]
