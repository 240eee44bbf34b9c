"""Known-answer tests of BCKD's losses: the binary discrepancy-weighted KD, the GIoU box KD
(values by hand and by numpy) and the softmax baseline's blind spot that motivates BCKD."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kd_engine.losses.bckd import binary_discrepancy_kd, discrepancy_weights, giou_box_kd, softmax_kd_dense
from kd_engine.losses.logit import kd


def _np_binary(s: np.ndarray, t: np.ndarray, beta: float) -> np.ndarray:
    q, p = 1 / (1 + np.exp(-s)), 1 / (1 + np.exp(-t))
    bce = -(p * np.log(q) + (1 - p) * np.log(1 - q))
    return (bce * np.abs(p - q) ** beta).reshape(len(s), -1).sum(1)


def test_binary_kd_hand_value_and_gradient():
    # p_S = 0.5, p_T = 0.75: BCE = ln 2, weight 0.25, gradient (p_S - p_T) * weight
    s = torch.zeros(1, 1, 1, requires_grad=True)
    t = torch.full((1, 1, 1), math.log(3.0))
    loss = binary_discrepancy_kd(s, t, reduction="sum")
    assert loss.item() == pytest.approx(0.25 * math.log(2.0), abs=1e-6)
    loss.backward()
    assert s.grad.item() == pytest.approx(-0.25 * 0.25, abs=1e-6)


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0])
def test_binary_kd_matches_numpy_per_image_and_normalizer(beta):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 4, generator=g) * 2, torch.randn(3, 5, 4, generator=g) * 2
    want = _np_binary(s.numpy().astype(np.float64), t.numpy().astype(np.float64), beta)
    got = binary_discrepancy_kd(s, t, beta=beta, reduction="none")
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    n = torch.tensor([2.0, 4.0, 5.0])
    np.testing.assert_allclose(binary_discrepancy_kd(s, t, beta=beta, normalizer=n, reduction="none").numpy(),
                               want / n.numpy(), rtol=1e-5)
    assert binary_discrepancy_kd(s, t, beta=beta).item() == pytest.approx(want.mean(), rel=1e-5)
    assert binary_discrepancy_kd(s, t, beta=beta, reduction="sum").item() == pytest.approx(want.sum(), rel=1e-5)


def test_binary_kd_identical_is_zero_and_teacher_gets_no_gradient():
    t = torch.randn(2, 6, 3, requires_grad=True)
    assert binary_discrepancy_kd(t.detach().clone(), t, reduction="sum").item() == 0.0
    s = torch.randn(2, 6, 3, requires_grad=True)
    binary_discrepancy_kd(s, t).backward()
    assert t.grad is None and s.grad is not None


def test_discrepancy_weights_by_hand():
    w = discrepancy_weights(torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), -math.log(3.0)]]), beta=2.0)
    np.testing.assert_allclose(w.numpy(), [[0.0625, 0.0625]], atol=1e-7)


def test_giou_box_kd_hand_value():
    # [0,0,2,2] vs [1,1,3,3]: IoU 1/7, hull 9, GIoU = 1/7 - 2/9; identical boxes cost 0
    s = torch.tensor([[[0.0, 0, 2, 2], [5, 5, 9, 8]]], requires_grad=True)
    t = torch.tensor([[[1.0, 1, 3, 3], [5, 5, 9, 8]]], requires_grad=True)
    w = torch.tensor([[0.5, 0.9]])
    want = 0.5 * (1 - (1 / 7 - 2 / 9)) / 2.0
    loss = giou_box_kd(s, t, w, normalizer=2.0, reduction="none")
    assert loss.shape == (1,) and loss.item() == pytest.approx(want, abs=1e-6)
    loss.sum().backward()
    assert t.grad is None and s.grad[0, 0].abs().sum() > 0


def test_giou_box_kd_weights_scale_per_image_and_shapes():
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(2, 4, 2, generator=g) * 10
    s = torch.cat([xy, xy + 1 + torch.rand(2, 4, 2, generator=g) * 5], -1)
    t = torch.cat([xy + 0.5, xy + 2 + torch.rand(2, 4, 2, generator=g) * 5], -1)
    ones = giou_box_kd(s, t, torch.ones(2, 4), reduction="none")
    assert torch.allclose(giou_box_kd(s, t, torch.full((2, 4), 3.0), reduction="none"), 3 * ones)
    assert giou_box_kd(s, t, torch.zeros(2, 4), reduction="sum").item() == 0.0
    with pytest.raises(ValueError, match="weights"):
        giou_box_kd(s, t, torch.ones(2, 3))


def test_softmax_baseline_is_kd_per_location_and_blind_to_shifts():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    per_loc = kd(s.reshape(6, 4), t.reshape(6, 4), temperature=2.0, reduction="none").view(2, 3).sum(1)
    assert torch.allclose(softmax_kd_dense(s, t, 2.0, reduction="none"), per_loc)
    # the protocol gap: a teacher that scores every class of a location 5 logits higher (a confident
    # detection versus a background cell) is invisible to softmax KD, not to the binary KD
    shifted = s + 5.0
    assert softmax_kd_dense(s, shifted, 2.0, reduction="sum").item() == pytest.approx(0.0, abs=1e-5)
    assert binary_discrepancy_kd(s, shifted, reduction="sum").item() > 1.0


def test_bad_reduction_and_shapes_raise():
    x = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="reduction"):
        binary_discrepancy_kd(x, x, reduction="avg")
    with pytest.raises(ValueError, match="same shape"):
        binary_discrepancy_kd(x, torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match=r"\(B, N, C\)"):
        softmax_kd_dense(torch.zeros(2, 4), torch.zeros(2, 4))
