"""The GiftNet notebook runs end to end at the smoke budget and writes finite results for every
arm: fMSE, MSE and PSNR against the plain network and against FiLM alone."""
from __future__ import annotations

import math


def test_p17_giftnet_smoke(smoke_results):
    payload = smoke_results("p17_giftnet")
    seen: dict[tuple[str, str], set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1 and row["mean"] is not None and math.isfinite(row["mean"])
        seen.setdefault((row["metric"], row["baseline"]), set()).add(row["arm"])
    for metric in ("test/student_fmse", "test/student_mse", "test/student_psnr"):
        assert seen[(metric, "plain")] == {"plain", "film", "film_relation"}
        assert seen[(metric, "film")] == {"film", "film_relation"}
    assert all(r["mean"] >= 0 for r in payload["rows"] if r["metric"] != "test/student_psnr")
    assert "load average" in payload["notes"] and "no verdict" in payload["notes"]
