"""Sample-space linear CKA against the feature-space formula, and the recorders' budget: a
recorder that fails or overruns warns once, keeps what it wrote, and the run trains on."""
from __future__ import annotations

import logging
import resource

import numpy as np
import pytest
import torch

from kd_engine.config import FeaturePair
from kd_engine.metrics import linear_cka
from kd_engine.trainers.evaluate import RecorderGuard, disparity_rows


def feature_space_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al.'s feature-space form, in numpy: ‖YcᵀXc‖²_F / (‖XcᵀXc‖_F ‖YcᵀYc‖_F)."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


@pytest.mark.parametrize("n,p,q", [(10, 3, 7), (40, 25, 5), (8, 100, 60)])
def test_sample_space_equals_feature_space(n, p, q):
    rng = np.random.default_rng(n + p + q)
    x = rng.normal(size=(n, p))
    y = x[:, :1] @ rng.normal(size=(1, q)) + 0.5 * rng.normal(size=(n, q))  # partly related
    got = linear_cka(torch.from_numpy(x), torch.from_numpy(y))
    assert got == pytest.approx(feature_space_cka(x, y), abs=1e-6)
    assert 0.0 < got < 1.0


def test_maps_are_flattened_like_vectors():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 4, 3, 3, generator=g), torch.randn(12, 2, 5, 5, generator=g)
    expected = feature_space_cka(x.flatten(1).double().numpy(), y.flatten(1).double().numpy())
    assert linear_cka(x, y) == pytest.approx(expected, abs=1e-6)


def test_invariant_to_orthogonal_transform_and_scale():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 16, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0, abs=1e-9)
    unrelated = linear_cka(x, torch.randn(30, 16, generator=g, dtype=torch.float64))
    assert unrelated < 0.8


def test_wide_64px_maps_stay_small_in_memory():
    """A 64×64×64 map (262,144 features a sample) would need a 512 GB feature-space Gram matrix;
    in sample space the extra memory is a few n×n and n×chunk float64 blocks."""
    x = torch.randn(64, 64, 64, 64)  # 64 samples, 64 MB as float32
    y = torch.randn(64, 32, 64, 64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    value = linear_cka(x, y)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert 0.0 <= value <= 1.0  # (random maps with p >> n score high: CKA's known small-n bias)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-9)
    assert grown_mb < 200


def test_disparity_rows_use_each_gram_once_and_stop_at_deadline():
    g = torch.Generator().manual_seed(2)
    s = {"a": torch.randn(9, 3, 4, 4, generator=g), "b": torch.randn(9, 5, generator=g)}
    t = {"a": torch.randn(9, 6, 4, 4, generator=g), "b": torch.randn(9, 8, generator=g)}
    pairs = [FeaturePair(student="a", teacher="a"), FeaturePair(student="b", teacher="b")]
    rows = disparity_rows(s, t, pairs)
    cka = {r[0]: r[3] for r in rows if r[2] == "cka"}
    assert cka["a"] == pytest.approx(feature_space_cka(s["a"].flatten(1).double().numpy(),
                                                       t["a"].flatten(1).double().numpy()), abs=1e-6)
    assert [r[2] for r in rows] == ["cka", "disparity", "attention_mse", "cka", "disparity"]
    assert disparity_rows(s, t, pairs, deadline=0.0) == []  # already past: nothing computed


def test_guard_warns_once_and_goes_on(caplog):
    events = []
    guard = RecorderGuard(seconds=60, megabytes=1, event=lambda m, level: events.append((level, m)))
    calls = []

    def broken(epoch):
        calls.append(epoch)
        raise RuntimeError("you tried to allocate 34359738368 bytes")

    with caplog.at_level(logging.WARNING, logger="kdw"):
        guard.run("features", broken, 0)
        guard.run("features", broken, 1)  # off after failing: not called again
    assert calls == [0]
    assert len([r for r in caplog.records if "recorder features" in r.message]) == 1
    assert events and events[0][0] == "warning" and "34359738368" in events[0][1]
    assert guard.fit_count("other", 100, 2**20 // 10) == 10  # 1 MB fits ten 0.1-MB samples


def test_guard_passes_stop_requests_through():
    class Stop(Exception):
        pass

    guard = RecorderGuard(seconds=60, megabytes=1, passthrough=(Stop,))
    with pytest.raises(Stop):
        guard.run("features", lambda: (_ for _ in ()).throw(Stop()))


def test_guard_warns_when_over_time(caplog):
    guard = RecorderGuard(seconds=1e-6, megabytes=1)
    with caplog.at_level(logging.WARNING, logger="kdw"):
        guard.run("features", lambda: sum(range(10000)))
        guard.run("features", lambda: sum(range(10000)))
    assert len([r for r in caplog.records if "budget" in r.message]) == 1


def _tiny_run(tmp_path, **overrides):
    from kd_engine.config import validate
    from kd_engine.store import open_run
    from kd_engine.run import train
    from tests.conftest import digits_raw

    raw = digits_raw(tmp_path / "runs", tmp_path / "cache", {
        "epochs": 1, "teacher.train.epochs": 1, "record.tensorboard": False, **overrides})
    return open_run(train(validate(raw), distributed=False))


def test_a_failing_recorder_does_not_end_the_run(tmp_path, monkeypatch):
    import kd_engine.trainers.evaluate as evaluate

    def no_memory(*_):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(evaluate, "gram", no_memory)
    run = _tiny_run(tmp_path)
    assert run.meta()["status"] == "finished"
    assert run.features().empty
    warnings = run.events().query("level == 'warning'")
    assert len(warnings) == 1 and "can't allocate memory" in warnings.message.iloc[0]


def test_memory_budget_cuts_the_probe_and_records(tmp_path):
    # digits features of resnet w8 + w16 at layer2 are a few KB a sample: 0.05 MB fits only a few
    run = _tiny_run(tmp_path, **{"record.budget_mb": 0.05})
    assert run.meta()["status"] == "finished"
    assert not run.features().empty
    warnings = run.events().query("level == 'warning'")
    assert len(warnings) == 1 and "probe cut from" in warnings.message.iloc[0]


def test_probe_of_a_lazy_training_split_is_not_augmented():
    from kd_engine.config import DataConfig
    from kd_engine.data import build_data
    from kd_engine.trainers.evaluate import probe_inputs

    data = DataConfig(name="fakedata", augment="cifar", params={"train_size": 12, "test_size": 4,
                                                                  "num_classes": 2, "memory_mb": 0.0001})
    lazy = build_data(data, 0).train
    first, ids = probe_inputs(lazy, 5)
    again, _ = probe_inputs(lazy, 5)
    assert first.shape == (5, 3, 32, 32) and torch.equal(first, again)
    assert torch.equal(ids, lazy.ids[:5])
