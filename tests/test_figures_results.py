"""workbench.figures.results: the trace data of the result figures."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from workbench import figures
from workbench.figures.results import (__all__ as exported, arm_comparison, arm_curves,
                                       arm_distributions, paired_differences)

SCRATCH = [0.80, 0.82, 0.84, 0.86]
KD = [0.85, 0.86, 0.90, 0.90]


def frame() -> pd.DataFrame:
    rows = [{"arm": arm, "seed": s, "acc": v}
            for arm, values in (("scratch", SCRATCH), ("kd", KD)) for s, v in enumerate(values)]
    return pd.DataFrame(rows)


def test_exported_through_package():
    for name in exported:
        assert getattr(figures, name) is not None


def test_arm_comparison_bars_errors_and_points():
    fig = arm_comparison(frame(), "acc", order=["kd", "scratch"])
    bar, points = fig.data
    assert list(bar.x) == ["kd", "scratch"]
    assert list(bar.y) == pytest.approx([0.8775, 0.83])
    assert list(bar.error_y.array) == pytest.approx([math.sqrt(0.002075 / 3), math.sqrt(0.002 / 3)])
    assert list(points.x) == ["kd"] * 4 + ["scratch"] * 4
    assert list(points.y) == pytest.approx(KD + SCRATCH)
    assert list(points.customdata) == [0, 1, 2, 3] * 2
    assert "4 seed" in fig.layout.title.text


def test_arm_comparison_single_seed_has_zero_error():
    fig = arm_comparison(frame().query("seed == 0"), "acc")
    assert list(fig.data[0].error_y.array) == [0.0, 0.0]


def test_paired_differences_points_and_band():
    fig = paired_differences(frame(), "scratch", "acc")
    per_seed, mean = fig.data
    assert list(per_seed.y) == pytest.approx([0.05, 0.04, 0.06, 0.04])
    assert list(per_seed.customdata) == [0, 1, 2, 3]
    assert list(mean.y) == pytest.approx([0.0475])
    assert list(mean.error_y.array) == pytest.approx([2 * math.sqrt(0.000275 / 3) / 2])
    assert fig.layout.shapes[0].y0 == 0.0  # the zero line


def test_arm_curves_means_per_arm():
    curves = pd.DataFrame([{"arm": a, "seed": s, "key": "val/acc", "epoch": e, "value": base + s + e}
                           for a, base in (("scratch", 0.0), ("kd", 10.0)) for s in (0, 1) for e in (0, 1)]
                          + [{"arm": "kd", "seed": 0, "key": "other", "epoch": 0, "value": 99.0}])
    fig = arm_curves(curves, "val/acc")
    means = [t for t in fig.data if t.name.endswith("(mean)")]
    assert [t.name for t in means] == ["scratch (mean)", "kd (mean)"]
    assert list(means[0].y) == pytest.approx([0.5, 1.5]) and list(means[1].y) == pytest.approx([10.5, 11.5])
    assert len(fig.data) == 6  # 2 arms x (2 seeds + mean)
    assert 99.0 not in [v for t in fig.data for v in t.y]


def test_arm_distributions_one_histogram_per_group():
    inst = pd.DataFrame({"when": ["epoch 1"] * 3 + ["epoch 2"] * 2, "loss": [0.1, 0.2, 0.3, 1.0, 2.0]})
    fig = arm_distributions(inst, "loss", group_col="when", nbins=4, log_y=True)
    assert [t.name for t in fig.data] == ["epoch 1 (n=3)", "epoch 2 (n=2)"]
    assert list(fig.data[1].x) == [1.0, 2.0]
    assert fig.data[0].xbins.size == pytest.approx((2.0 - 0.1) / 4)
    assert fig.layout.yaxis.type == "log" and fig.layout.barmode == "overlay"
