"""AID on per-sample losses: w = exp(−α·L_T) of the teacher's own loss, and its two controls."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kd_engine.config import validate
from kd_engine.errors import ConfigError
from kd_engine.store import open_run
from kd_engine.weighting import build_weighting


def test_weights_follow_exp_of_hand_built_teacher_losses():
    losses = torch.tensor([0.0, 0.5, 2.0, 10.0])
    weights = build_weighting("aid", {"alpha": 0.1})({"teacher_loss": losses})
    expected = [1.0, math.exp(-0.05), math.exp(-0.2), math.exp(-1.0)]
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert not weights.requires_grad


def test_alpha_zero_is_uniform_and_larger_alpha_discounts_more():
    losses = torch.tensor([0.3, 1.7])
    assert build_weighting("aid", {"alpha": 0.0})({"teacher_loss": losses}).tolist() == [1.0, 1.0]
    low = build_weighting("aid", {"alpha": 0.1})({"teacher_loss": losses})
    high = build_weighting("aid", {"alpha": 2.0})({"teacher_loss": losses})
    assert (high < low).all()


def test_shuffled_control_permutes_the_same_weights():
    losses = torch.linspace(0, 5, 32)
    plain = build_weighting("aid", {"alpha": 0.5})({"teacher_loss": losses})
    shuffled = build_weighting("aid", {"alpha": 0.5, "shuffle": True, "seed": 3})({"teacher_loss": losses})
    assert sorted(shuffled.tolist()) == pytest.approx(sorted(plain.tolist()))
    assert not torch.equal(shuffled, plain)


def test_scaled_uniform_control_and_bad_alpha():
    weights = build_weighting("uniform", {"value": 0.8})({"distill_loss": torch.ones(3)})
    assert weights.tolist() == pytest.approx([0.8] * 3)
    with pytest.raises(ConfigError, match="weighting.params.alpha"):
        build_weighting("aid", {"alpha": -1})


def test_recorded_weights_are_exp_of_recorded_teacher_losses(make_raw):
    from kd_engine.run import train

    raw = make_raw({"weighting": {"strategy": "aid", "params": {"alpha": 0.5}}, "epochs": 1})
    run = open_run(train(validate(raw)))
    records = run.instances(split="train")
    assert len(records) > 0
    np.testing.assert_allclose(records.weight, np.exp(-0.5 * records.teacher_loss), rtol=1e-5)
    assert records.weight.min() < 0.999  # the teacher is not perfect on every instance
