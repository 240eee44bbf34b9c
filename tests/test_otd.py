"""OTD (paper 5, a reconstruction): gradient-subspace projection, the zero-valued surrogate that
applies it, the stained digits with new classes, and the method through the trainer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kd_engine.config import DataConfig, load_config
from kd_engine.data import build_data
from kd_engine.errors import ConfigError
from kd_engine.parts.grad_subspace import GradientSubspace, energy_rank, gradient_surrogate, project


def test_energy_rank_known_answers():
    s = torch.tensor([3.0, 2.0, 1.0])  # energies 9, 4, 1 of 14: cumulative 0.643, 0.929, 1
    assert energy_rank(s, 0.5) == 1 and energy_rank(s, 0.9) == 2 and energy_rank(s, 0.95) == 3


def test_projection_known_answers():
    basis = torch.tensor([[1.0], [0.0], [0.0]])
    g = torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(project(g, basis, 0.3), torch.tensor([1.0, 0.6, 0.9]))
    assert torch.allclose(project(g, basis, 1.0), g)            # α = 1: no steering
    assert torch.allclose(project(g, basis, 0.0), torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(project(g, None, 0.3), g)                # no subspace yet: unchanged


def test_surrogate_has_value_zero_and_gradient_delta():
    w = torch.randn(3, requires_grad=True)
    delta = torch.tensor([0.5, -1.0, 2.0])
    value = gradient_surrogate([w], [delta])
    value.backward()
    assert value.item() == 0.0 and torch.allclose(w.grad, delta)


def test_subspace_finds_the_span_of_its_gradients():
    torch.manual_seed(0)
    a, b = torch.randn(50), torch.randn(50)
    space = GradientSubspace(size=30, refresh=5, energy=0.999)
    for _ in range(20):
        space.push(torch.randn(()) * a + torch.randn(()) * b)
    assert space.rank == 2
    assert space.cosine(a + 3 * b) == pytest.approx(1.0, abs=1e-4)
    orth = torch.randn(50)
    orth -= space.basis @ (space.basis.T @ orth)
    assert space.cosine(orth) == pytest.approx(0.0, abs=1e-4)
    assert space.energy_at(2) == pytest.approx(1.0, abs=1e-6)


def test_stained_digits_with_new_classes():
    data = build_data(DataConfig(name="digits_shift", params={"shots": 5}), 1)
    meta = data.meta
    domain, few = np.array(meta["domain"]), np.array(meta["fewshot"])
    y = data.train.y.numpy()
    assert y[domain == 0].max() < 8 and (y[domain == 0] >= 0).all()       # source: known classes, labelled
    assert few.sum() == 10 and set(y[few]) == {8, 9}                       # 5 labelled per novel class
    assert (y[(domain == 1) & ~few] == -1).all()                           # the rest of the target: no label
    assert set(data.test.y.tolist()) == set(range(10))
    assert not set(data.test.ids.tolist()) & set(data.train.ids.tolist())
    assert data.train.x[domain == 1].mean() > data.train.x[domain == 0].mean()  # inverted: brighter
    again = build_data(DataConfig(name="digits_shift", params={"shots": 5}), 1)
    assert torch.equal(again.test.x, data.test.x)
    with pytest.raises(ConfigError, match=r"data.params: unknown parameter .shot."):
        build_data(DataConfig(name="digits_shift", params={"shot": 5}), 1)


def _cfg(tmp_path, *extra):
    return load_config("configs/otd_digits.yaml",
                       ["epochs=2", "threads=1", "device=cpu", f"runs_dir={tmp_path}",
                        "record.eval_instances=true", "distill.params.threshold=0.3", *extra])


def test_config_errors_name_the_field(tmp_path):
    from kd_engine.run import train

    with pytest.raises(ConfigError, match=r"distill.params.group"):
        train(_cfg(tmp_path, "distill.params.group=[nope]"), distributed=False)
    with pytest.raises(ConfigError, match=r"distill.params.mode"):
        train(_cfg(tmp_path, "distill.params.mode=source_only"), distributed=False)


def _otd(*extra):
    from kd_engine.methods.otd import OTD
    from kd_engine.models import build_model

    cfg = load_config("configs/otd_digits.yaml", ["distill.params.threshold=1.01", *extra])
    data = build_data(cfg.data, cfg.seed)
    torch.manual_seed(0)
    method = OTD(cfg, build_model(cfg.student, data.input_shape, 10), None, data.input_shape)
    g = torch.randn(5, sum(p.numel() for p in method.group))
    for i in range(30):  # a reliable history spanning 5 directions
        method.src_space.push(torch.randn(5) @ g)
    method.eval()        # no pushes during the checked step
    few = torch.tensor(data.meta["fewshot"])
    idx = torch.cat([torch.nonzero(few).flatten(), torch.arange(40)])
    return method, data.train.x[idx], data.train.y[idx], data.train.ids[idx]


def test_steered_gradient_known_answer():
    """One step, stream 1 on the few-shot novel gradient (no pseudo-labels: threshold above 1):
    the group's gradient of the total is g_src + U_rU_rᵀg + α(I − U_rU_rᵀ)g."""
    from kd_engine.parts.grad_subspace import flat

    method, x, y, ids = _otd("distill.params.alpha=0.3", "distill.params.stream2=false")
    out = method(x, y, ids=ids)
    grad = lambda loss: flat(torch.autograd.grad(loss, method.group, retain_graph=True))
    g_src, g_target, total = grad(out.losses["task"]), grad(out.losses["target"]), grad(out.total)
    assert method.src_space.rank == 5 and out.losses["steer"].item() == 0.0
    expected = g_src + project(g_target, method.src_space.basis, 0.3)
    assert torch.allclose(total, expected, atol=1e-5)
    assert not torch.allclose(total, g_src + g_target, atol=1e-3)
    method1, x, y, ids = _otd("distill.params.alpha=1.0", "distill.params.stream2=false")
    out1 = method1(x, y, ids=ids)                 # α = 1: the steering term's gradient is rounding only
    steer = flat(torch.autograd.grad(out1.losses["steer"], method1.group, retain_graph=True))
    assert steer.norm() < 1e-6 * flat(torch.autograd.grad(out1.losses["target"], method1.group)).norm()


def test_otd_trains_and_records(tmp_path):
    from kd_engine.store import open_run
    from kd_engine.run import train

    run = open_run(train(_cfg(tmp_path), distributed=False))
    inst = run.instances(split="train")
    for col in ("target", "fewshot", "pseudo_label", "pseudo_conf", "pseudo_used", "pseudo_correct"):
        assert col in inst
    assert inst.loc[inst["target"] == 0, "pseudo_label"].eq(-1).all()
    keys = set(run.scalars()["key"])
    assert {"train/steer", "train/src_rank", "train/cos_known_src", "train/src_energy_r3"} <= keys
