"""record.grad_norms_every: grad_norm/<loss> is the L2 norm of each named loss's gradient with
respect to the student's trainable parameters (checked against per-parameter gradients summed by
hand), logged every N steps, and recording it leaves the trained weights unchanged."""
from __future__ import annotations

import math

import torch
from safetensors.torch import load_file

from kd_engine.config import validate
from kd_engine.run import train
from kd_engine.store import open_run
from kd_engine.trainers.probes import grad_norms


def test_grad_norms_match_gradients_taken_one_loss_at_a_time():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    x = torch.randn(5, 4)
    out = model(x)
    losses = {"a": out.pow(2).mean(), "b": out[:, 0].sum(), "const": torch.tensor(1.0)}
    params = list(model.parameters())
    norms = grad_norms(losses, params)
    for name in ("a", "b"):
        model.zero_grad()
        model(x).pow(2).mean().backward() if name == "a" else model(x)[:, 0].sum().backward()
        expected = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params))
        assert math.isclose(norms[f"grad_norm/{name}"], expected, rel_tol=1e-6), name
    assert norms["grad_norm/const"] == 0.0
    model.zero_grad(set_to_none=True)
    grad_norms(losses, params)
    assert all(p.grad is None for p in params)


def test_recording_grad_norms_every_two_steps_changes_no_weight(make_raw, tmp_path):
    runs = {}
    for every in (0, 2):
        raw = make_raw({"epochs": 1, "name": f"gn{every}", "record.grad_norms_every": every,
                        "data.val_fraction": 0.3, "data.test_fraction": 0.6})
        runs[every] = open_run(train(validate(raw), distributed=False))
    plain, probed = (load_file(str(runs[e].checkpoint_path("student"))) for e in (0, 2))
    assert plain.keys() == probed.keys() and all(torch.equal(plain[k], probed[k]) for k in plain)
    norms = runs[2].scalars(keys=["grad_norm/task", "grad_norm/distill"])
    steps = sorted(runs[2].scalars(keys=["train/loss"]).step.unique())
    assert sorted(norms.step.unique()) == [s for s in steps if s % 2 == 0]
    assert (norms.value > 0).all() and norms.value.map(math.isfinite).all()
    assert not [k for k in runs[0].scalar_keys() if k.startswith("grad_norm/")]
