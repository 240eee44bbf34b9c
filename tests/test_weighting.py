"""Weighting strategies: uniform, teacher confidence (checked against hand-computed softmax
values), and one-line ConfigErrors naming the offending key."""
from __future__ import annotations

import math

import pytest
import torch

from kd_engine.errors import ConfigError
from kd_engine.weighting import WEIGHTINGS, WeightingStrategy, build_weighting

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5], [-3.0, 1.0, 4.0], [0.0, 3.0, 0.0]])
LABELS = torch.tensor([0, 2, 1, 1])


def softmax_row(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def batch(**extra):
    out = {"distill_loss": torch.tensor([0.3, 1.2, 0.0, 2.5], requires_grad=True),
           "teacher_loss": torch.tensor([0.1, 1.1, 5.0, 0.05]),
           "student_loss": torch.tensor([0.2, 0.9, 1.0, 0.4]),
           "teacher_logits": LOGITS.clone().requires_grad_(True), "label": LABELS}
    out.update(extra)
    return out


def test_registry_has_the_two_baselines():
    assert {"uniform", "teacher_confidence"} <= set(WEIGHTINGS.names())
    for name in WEIGHTINGS.names():
        assert issubclass(WEIGHTINGS.get(name), WeightingStrategy)


def test_uniform_gives_ones():
    weights = build_weighting("uniform", {})(batch())
    assert torch.equal(weights, torch.ones(4))
    assert not weights.requires_grad


@pytest.mark.parametrize("power", [1.0, 2.0, 0.5, 0.0])
def test_teacher_confidence_max(power):
    strategy = build_weighting("teacher_confidence", {"source": "max", "power": power})
    weights = strategy(batch())
    expected = [max(softmax_row(row)) ** power for row in LOGITS.tolist()]
    assert weights.shape == (4,) and not weights.requires_grad
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("power", [1.0, 3.0])
def test_teacher_confidence_target(power):
    weights = build_weighting("teacher_confidence", {"source": "target", "power": power})(batch())
    expected = [softmax_row(row)[label] ** power for row, label in zip(LOGITS.tolist(), LABELS.tolist())]
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)
    # hand-checked value for the uniform row: 1/3 each
    assert weights[1].item() == pytest.approx((1 / 3) ** power, rel=1e-6)


def test_teacher_confidence_normalize_has_mean_one():
    weights = build_weighting("teacher_confidence", {"source": "target", "power": 2, "normalize": True})(batch())
    raw = [softmax_row(row)[label] ** 2 for row, label in zip(LOGITS.tolist(), LABELS.tolist())]
    mean = sum(raw) / len(raw)
    assert weights.tolist() == pytest.approx([w / mean for w in raw], rel=1e-6)
    assert weights.mean().item() == pytest.approx(1.0, rel=1e-6)


def test_default_is_max_confidence_power_one():
    weights = build_weighting("teacher_confidence", {})(batch())
    assert weights.tolist() == pytest.approx([max(softmax_row(r)) for r in LOGITS.tolist()], rel=1e-6)


@pytest.mark.parametrize("name, params, needles", [
    ("teacher_confidence", {"sharpness": 2}, ["weighting.params", "'sharpness'", "source", "power"]),
    ("uniform", {"power": 2}, ["weighting.params", "'power'", "allowed: value"]),
    ("teacher_confidence", {"source": "min"}, ["weighting.params.source", "'min'", "'max'", "'target'"]),
    ("teacher_confidence", {"power": -1}, ["weighting.params.power", "-1"]),
    ("fancy", {}, ["weighting.strategy", "'fancy'", "uniform", "teacher_confidence"]),
])
def test_bad_weighting_config_names_the_key(name, params, needles):
    with pytest.raises(ConfigError) as info:
        build_weighting(name, params)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)
