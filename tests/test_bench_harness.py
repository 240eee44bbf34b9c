"""The shared `make bench` harness: interleaved rounds give every arm the same epochs in a rotating
order, and a ratio is the median of the per-round ratios (checked against numpy)."""
from __future__ import annotations

import random
import numpy as np
import pytest
import torch

from kd_engine.bench_harness import Arm, busy_note, interleave, paired_ratio, summary, timed


@pytest.fixture(autouse=True)
def _no_gc(monkeypatch):
    """`sample` collects garbage before each timing (a second or more in a large test process)."""
    monkeypatch.setattr("kd_engine.bench_harness.gc.collect", lambda: 0)


def _recording_arms(names, calls):
    def make(name):
        def epoch(e):
            calls.append((name, e))
            return 4
        return Arm(name, epoch)
    return [make(n) for n in names]


def test_interleave_warms_up_then_rotates_and_every_arm_trains_the_same_epochs():
    calls = []
    arms = _recording_arms("abc", calls)
    interleave(arms, rounds=4, epochs_per_sample=2, device=torch.device("cpu"))
    assert calls[:3] == [("a", 0), ("b", 0), ("c", 0)]  # one warm-up epoch each
    rounds = [calls[3 + 6 * r: 9 + 6 * r] for r in range(4)]
    # round r starts at arm r; odd rounds run backwards; each sample trains 2 consecutive epochs
    assert [[n for n, _ in rnd[::2]] for rnd in rounds] == [list("abc"), list("acb"), list("cab"), list("cba")]
    for r, rnd in enumerate(rounds):
        assert {e for _, e in rnd} == {1 + 2 * r, 2 + 2 * r}
    assert all(len(arm.wall) == len(arm.cpu) == 4 for arm in arms)  # the warm-up is not kept


def test_interleave_without_rotation_alternates():
    calls = []
    interleave(_recording_arms("xy", calls), rounds=3, epochs_per_sample=1, device=torch.device("cpu"),
               rotate=False)
    assert [n for n, _ in calls[2:]] == list("xyyxxy")


def test_paired_ratio_is_the_median_of_per_round_ratios():
    a, b = Arm("a", None), Arm("b", None)
    a.wall, b.wall = [2.0, 3.0, 9.0, 4.0], [1.0, 2.0, 3.0, 4.0]
    a.cpu, b.cpu = [1.0, 1.0, 1.0, 1.0], [2.0, 1.0, 4.0, 1.0]
    entry = paired_ratio(a, b, "a vs b", goal=1.75)
    per_round = np.array(a.wall) / np.array(b.wall)  # 2, 1.5, 3, 1
    assert entry["per_round"] == pytest.approx(per_round.tolist())
    assert entry["ratio"] == pytest.approx(np.median(per_round)) == pytest.approx(1.75)
    assert (entry["p25"], entry["p75"]) == pytest.approx(tuple(np.percentile(per_round, [25, 75])))
    assert entry["cpu_ratio"] == pytest.approx(np.median(np.array(a.cpu) / np.array(b.cpu)))
    assert entry["passed"] is True  # 1.75 <= 1.75
    assert paired_ratio(a, b, "a vs b", goal=1.75, strict=True)["passed"] is False
    assert "goal" not in paired_ratio(a, b, "a vs b")
    assert summary([5.0, 1.0, 3.0]) == {"median": 3.0, "p25": 2.0, "p75": 4.0, "min": 1.0, "max": 5.0}


def test_timed_adds_up_seconds_and_busy_note_only_when_loaded():
    totals = {}
    double = timed(lambda x: 2 * x, totals, "f")
    assert double(3) == 6 and double(4) == 8 and 0 < totals["f"] < 1
    settings = {"load_average": [1.0, 2.5], "cpu_count": 2}
    assert "load average 2.5 on 2 CPUs" in busy_note({"settings": settings})[0]
    assert busy_note({"settings": {"load_average": [1.0, 2.0], "cpu_count": 2}}) == []
    assert busy_note({"settings": {"load_average": [None, None], "cpu_count": 2}}) == []


def test_median_interval_is_order_statistics_with_the_stated_coverage():
    from kd_engine.bench_harness import median_interval

    assert median_interval(list(range(1, 41))) == (14, 27)  # n=40: ranks 14 and 27 (95.6 %)
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few values for 95 %: the whole range
    rng = random.Random(0)
    hits = sum(lo <= 0.0 <= hi for lo, hi in (median_interval([rng.gauss(0, 1) for _ in range(40)])
                                               for _ in range(1000)))
    assert 0.93 <= hits / 1000 <= 0.98
