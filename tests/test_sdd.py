"""SDD (paper 8): the tiny DDPM's closed-form noising, score distillation, the gradient-entropy
indicator, the digits editing data and a smoke run of the generation task."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kd_engine.config import load_raw, validate
from kd_engine.data import build_data
from kd_engine.errors import ConfigError
from kd_engine.parts.ddpm import (Denoiser, alpha_bar, gradient_entropy, guided_eps, q_sample, sds_gradient,
                                  sds_surrogate)


def test_alpha_bar_matches_numpy_linear_schedule():
    expected = np.cumprod(1 - np.linspace(1e-4, 0.02, 200))
    assert np.allclose(alpha_bar(200).numpy(), expected, rtol=1e-6)


def test_forward_noising_is_the_closed_form():
    torch.manual_seed(0)
    abar = alpha_bar(200)
    x0, eps = torch.randn(5, 64), torch.randn(5, 64)
    t = torch.tensor([0, 10, 50, 120, 199])
    a = np.cumprod(1 - np.linspace(1e-4, 0.02, 200))[t.numpy()][:, None]
    expected = np.sqrt(a) * x0.numpy() + np.sqrt(1 - a) * eps.numpy()
    assert np.allclose(q_sample(x0, t, eps, abar).numpy(), expected, atol=1e-6)
    assert torch.equal(q_sample(x0, torch.zeros(5, dtype=torch.long), eps, torch.ones(200)), x0)  # ᾱ = 1: clean


def test_sds_with_a_perfect_denoiser_gives_zero_gradient():
    abar = alpha_bar(200)
    eps = torch.randn(4, 64)
    t = torch.tensor([3, 40, 100, 190])
    grad = sds_gradient(eps.clone(), eps, t, abar)
    assert torch.count_nonzero(grad) == 0
    x = torch.rand(4, 64, requires_grad=True)
    sds_surrogate(x, grad).sum().backward()
    assert torch.count_nonzero(x.grad) == 0


def test_sds_gradient_weight_and_surrogate_gradient():
    abar = alpha_bar(200)
    eps, eps_hat = torch.zeros(2, 3), torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 4.0]])
    t = torch.tensor([0, 199])
    w = 1 - np.cumprod(1 - np.linspace(1e-4, 0.02, 200))[[0, 199]]
    grad = sds_gradient(eps_hat, eps, t, abar)
    assert np.allclose(grad.numpy(), w[:, None] * eps_hat.numpy(), atol=1e-7)
    x = torch.randn(2, 3, requires_grad=True)
    sds_surrogate(x, grad).sum().backward()
    assert torch.allclose(x.grad, grad)  # the surrogate's gradient is exactly g


def test_guidance_interpolates_and_extrapolates():
    cond, uncond = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    assert torch.equal(guided_eps(cond, uncond, 1.0), cond)
    assert torch.equal(guided_eps(cond, uncond, 0.0), uncond)
    assert torch.equal(guided_eps(cond, uncond, 3.0), torch.tensor([[4.0, -2.0]]))


def test_gradient_entropy_hand_built():
    # |g| = (0, 0, ln 2): softmax = (1/4, 1/4, 1/2), H = ln 4 / 2 + ln 2 / 2 = 1.5 ln 2
    g = torch.tensor([[0.0, 0.0, -math.log(2.0)]])
    assert gradient_entropy(g).item() == pytest.approx(1.5 * math.log(2.0), rel=1e-6)
    assert gradient_entropy(torch.full((1, 64), 0.3)).item() == pytest.approx(math.log(64), rel=1e-6)
    focused = torch.zeros(1, 64)
    focused[0, 5] = 50.0
    assert gradient_entropy(focused).item() < 1e-10


def test_denoiser_null_token_and_guided_shapes():
    model = Denoiser(64, 10, hidden=16)
    x, t, c = torch.randn(3, 64), torch.tensor([1, 2, 3]), torch.tensor([0, 5, 9])
    assert model(x, t, c).shape == (3, 64)
    assert model(x, t, torch.full((3,), 10)).shape == (3, 64)  # index 10 is the null label
    assert torch.allclose(model.guided(x, t, c, 1.0), model(x, t, c), atol=1e-6)


def test_digits_edit_splits_and_bad_params():
    data = build_data(SimpleNamespace(name="digits_edit", params={"source_class": 3, "target_class": 8}), 0)
    assert set(data.train.y.tolist()) == {3} and set(data.test.y.tolist()) == {3}
    assert data.meta["target_class"] == 8
    prior = data.meta["prior"]
    assert set(prior["y"].tolist()) == set(range(10))
    assert not set(prior["ids"].tolist()) & set(data.test.ids.tolist())  # the judge never sees test
    with pytest.raises(ConfigError, match="target_class"):
        build_data(SimpleNamespace(name="digits_edit", params={"source_class": 3, "target_class": 3}), 0)
    with pytest.raises(ConfigError, match="source_class"):
        build_data(SimpleNamespace(name="digits_edit", params={"source_class": 12}), 0)


def _raw(tmp_path, **params):
    raw = load_raw("configs/sdd_digits.yaml")
    raw.update(epochs=2, eval_every=1, runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"),
               device="cpu")
    raw["distill"]["params"].update(ddpm_train_steps=30, ddpm_hidden=32, indicator_samples=8, **params)
    return raw


def test_sdd_smoke_run_records_edits_and_indicator(tmp_path):
    from kd_engine.run import train
    from kd_engine.store import open_run

    run = open_run(train(validate(_raw(tmp_path), "sdd"), distributed=False))
    meta = run.meta()
    assert meta["task"] == "generation" and meta["target_class"] == 8
    entropy = meta["indicator_entropy"]
    assert len(entropy) == len(meta["indicator_t"]) and all(0 < h <= math.log(64) + 1e-6 for h in entropy)
    assert meta["t_star"] == meta["indicator_t"][int(np.argmin(entropy))] == meta["timestep_used"]
    rows = run.instances(split="train")
    assert {"timestep", "entropy", "target", "label", "loss", "identity"} <= set(rows.columns)
    assert set(rows["timestep"]) == {float(meta["t_star"])} and set(rows["target"]) == {8}
    final = meta["final_metrics"]
    assert 0 <= final["test/student_edit_success"] <= 1 and final["test/student_identity_l2"] >= 0
    edits = run.load_artifact("edits/test")
    assert edits.shape[1:] == (2, 8, 8)


def test_sdd_random_policy_draws_per_sample_timesteps(tmp_path):
    from kd_engine.run import train
    from kd_engine.store import open_run

    raw = _raw(tmp_path, timestep="random", t_min=4, t_max=196)
    raw["epochs"] = 1
    rows = open_run(train(validate(raw, "sdd"), distributed=False)).instances(split="train")
    assert rows["timestep"].between(4, 196).all() and rows["timestep"].nunique() > 5


def test_sdd_refuses_bad_pairings(tmp_path):
    from kd_engine.run import train

    raw = _raw(tmp_path)
    raw["data"] = {"name": "digits", "batch_size": 16}
    with pytest.raises(ConfigError, match="sdd"):
        train(validate(raw, "sdd"), distributed=False)
    raw = _raw(tmp_path)
    raw["method"] = "standard"
    with pytest.raises(ConfigError, match="method"):
        train(validate(raw, "sdd"), distributed=False)
    with pytest.raises(ConfigError, match="distill.params.t: a timestep in"):
        train(validate(_raw(tmp_path, t=500), "sdd"), distributed=False)
    with pytest.raises(ConfigError, match=r"distill.params.grid.1: a timestep in \[0, 199\], got 300"):
        train(validate(_raw(tmp_path, grid=[10, 300]), "sdd"), distributed=False)
    with pytest.raises(ConfigError, match="distill.params.timestep"):
        train(validate(_raw(tmp_path, timestep="sometimes"), "sdd"), distributed=False)


def test_entropy_indicator_known_answer_with_an_identity_denoiser():
    """A stub denoiser that returns its input: at x_0 = 0, x_t = √(1−ᾱ_t)ε, so
    g_t = (1−ᾱ_t)(√(1−ᾱ_t) − 1)ε and H(t) is the pixel-softmax entropy of |g_t|, computed here
    with numpy from the same noise draws."""
    from kd_engine.methods.sdd import entropy_indicator

    class Identity:
        def guided(self, x_t, t, c, scale):
            return x_t

    abar = alpha_bar(200)
    grid = [10, 100, 190]
    x = torch.zeros(6, 64)
    got = entropy_indicator(Identity(), x, torch.zeros(6, dtype=torch.long), grid, abar, 3.0,
                            torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    a = np.cumprod(1 - np.linspace(1e-4, 0.02, 200))
    for t, h in zip(grid, got):
        eps = torch.randn(6, 64, generator=gen).numpy().astype(np.float64)
        g = np.abs((1 - a[t]) * (np.sqrt(1 - a[t]) - 1) * eps)
        q = np.exp(g) / np.exp(g).sum(1, keepdims=True)
        assert h == pytest.approx(float((-(q * np.log(q)).sum(1)).mean()), rel=1e-5)
    assert got[0] > got[-1]  # a larger |g| (later t here) concentrates the softmax: lower entropy
