"""DOT (paper 22): split momentum for the task and distillation gradients."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from kd_engine.config import validate
from kd_engine.errors import ConfigError
from kd_engine.store import open_run
from kd_engine.optim.dot import DOT


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _losses(model, x, y, teacher_logits):
    logits = model(x)
    task = nn.functional.cross_entropy(logits, y)
    distill = nn.functional.mse_loss(logits, teacher_logits)
    return task, distill


def test_delta_zero_matches_sgd_with_momentum_over_20_steps():
    torch.manual_seed(1)
    x, y, t = torch.randn(16, 6), torch.randint(0, 3, (16,)), torch.randn(16, 3)
    dot_model, sgd_model = _model(), _model()
    dot = DOT(dot_model.parameters(), lr=0.1, momentum=0.9, delta=0.0, weight_decay=5e-4)
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(20):
        dot.backward_streams(*_losses(dot_model, x, y, t))
        dot.step()
        sgd.zero_grad()
        task, distill = _losses(sgd_model, x, y, t)
        (task + distill).backward()
        sgd.step()
    for a, b in zip(dot_model.parameters(), sgd_model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_positive_delta_differs_from_sgd_and_uses_two_buffers():
    torch.manual_seed(1)
    x, y, t = torch.randn(16, 6), torch.randint(0, 3, (16,)), torch.randn(16, 3)
    model, reference = _model(), _model()
    dot = DOT(model.parameters(), lr=0.1, momentum=0.9, delta=0.075)
    ref = DOT(reference.parameters(), lr=0.1, momentum=0.9, delta=0.0)
    for _ in range(5):
        for opt, m in ((dot, model), (ref, reference)):
            opt.backward_streams(*_losses(m, x, y, t))
            opt.step()
    state = dot.state[next(model.parameters())]
    assert {"task_buffer", "kd_buffer"} <= set(state)
    assert any(not torch.allclose(a, b) for a, b in zip(model.parameters(), reference.parameters()))


def test_distillation_gradients_are_copied_not_aliased():
    torch.manual_seed(2)
    model = _model()
    dot = DOT(model.parameters(), lr=0.1, delta=0.075)
    x, y, t = torch.randn(8, 6), torch.randint(0, 3, (8,)), torch.randn(8, 3)
    dot.backward_streams(*_losses(model, x, y, t))
    saved = {p: g.clone() for p, g in dot._kd_grads.items()}
    for p in model.parameters():  # in-place zeroing, the pitfall of keeping references
        p.grad.zero_()
    for p, g in dot._kd_grads.items():
        assert torch.equal(g, saved[p]) and g.abs().sum() > 0
        assert g.data_ptr() != p.grad.data_ptr()


def test_bad_delta_is_a_config_error():
    with pytest.raises(ConfigError, match="delta"):
        DOT(_model().parameters(), lr=0.1, momentum=0.9, delta=0.2)


def test_dot_from_a_config_records_both_loss_streams(make_raw):
    from kd_engine.run import train

    raw = make_raw({"optimizer": {"name": "dot", "lr": 0.05, "params": {"delta": 0.075}}, "epochs": 1})
    run = open_run(train(validate(raw)))
    keys = set(run.scalar_keys())
    assert {"train/task", "train/distill"} <= keys
    assert run.status() == "finished"


def test_multistep_schedule_decays_at_each_milestone():
    from kd_engine.config import ScheduleConfig
    from kd_engine.optim import lr_factor

    schedule = ScheduleConfig(name="multistep", milestones=[40, 50], gamma=0.1)
    factors = [lr_factor(schedule, epoch, 60) for epoch in (0, 39, 40, 49, 50, 59)]
    assert factors == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
