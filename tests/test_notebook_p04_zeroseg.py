"""The ZeroSeg notebook runs end to end at the smoke budget and writes finite results: test mIoU
and pixel accuracy of both segment-token arms and the teacher's crop-window reference against
the image-level baseline."""
from __future__ import annotations

import math


def test_p04_zeroseg_smoke(smoke_results):
    payload = smoke_results("p04_zeroseg")
    arms = {"image_level", "segments", "segments_hungarian", "teacher (crop windows)"}
    by_metric: dict[str, set[str]] = {}
    for row in payload["rows"]:
        assert row["n"] == 1 and row["baseline"] == "image_level"
        assert row["mean"] is not None and math.isfinite(row["mean"]) and 0.0 <= row["mean"] <= 1.0
        by_metric.setdefault(row["metric"], set()).add(row["arm"])
    assert by_metric == {"test/student_mIoU": arms, "test/student_pixel_acc": arms}
    assert "load average" in payload["notes"] and "reconstruction" in payload["title"]
