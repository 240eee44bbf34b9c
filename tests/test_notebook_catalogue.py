"""The catalogue notebook runs every arm end to end at the smoke budget and writes finite results."""
from __future__ import annotations

import math

import pytest

ARMS = {"ce", "kd", "kd_standardized", "dkd", "dist", "cs", "at", "fitnet", "nst", "sp", "pkt", "cc", "rkd",
        "vid", "ofd", "crd", "reviewkd"}


@pytest.mark.slow  # 17 arms: about 3 minutes on the shared 2-core machine
def test_catalogue_smoke(smoke_results):
    payload = smoke_results("catalogue")
    rows = payload["rows"]
    assert {r["arm"] for r in rows} == ARMS
    for row in rows:
        assert row["baseline"] == "kd" and row["n"] == 1 and row["metric"] == "test/student_acc"
        assert row["mean"] is not None and math.isfinite(row["mean"]) and 0.0 <= row["mean"] <= 1.0
    assert "no verdict is possible" in payload["notes"]
