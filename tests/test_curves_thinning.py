"""Long curves are thinned for drawing but smoothed on every point."""
import numpy as np
import pandas as pd

from workbench.figures import ema_smooth, scalar_curves


def test_long_curves_are_thinned_keeping_first_and_last_points():
    steps = np.arange(10_000)
    frame = pd.DataFrame({"step": steps, "key": "train/loss", "value": np.sin(steps / 50.0), "run": "a"})
    fig = scalar_curves(frame, "train/loss", smoothing=0.0, max_points=500)
    xs = list(fig.data[0].x)
    assert 490 <= len(xs) <= 500 and xs[0] == 0 and xs[-1] == 9_999


def test_smoothing_uses_every_point_before_thinning():
    values = np.r_[np.zeros(999), 1000.0]  # a spike at the very end
    frame = pd.DataFrame({"step": np.arange(1000), "key": "k", "value": values, "run": "a"})
    fig = scalar_curves(frame, "k", smoothing=0.9, max_points=10)
    assert fig.data[1].y[-1] == ema_smooth(values, 0.9)[-1]


def test_vectorised_ema_matches_the_definition_and_skips_nan():
    values = np.array([1.0, np.nan, 3.0, 2.0])
    w = 0.5
    last, count, expected = 0.0, 0, []
    for v in values:
        if np.isnan(v):
            expected.append(np.nan)
            continue
        last, count = last * w + (1 - w) * v, count + 1
        expected.append(last / (1 - w ** count))
    np.testing.assert_allclose(ema_smooth(values, w), expected)
