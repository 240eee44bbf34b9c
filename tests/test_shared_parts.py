"""Known-answer tests for the shared engine parts: binary KD, relation losses, EMA teacher and
the extra metrics (AUROC, multi-label mAP, Hungarian accuracy, ECE)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from kd_engine.losses import binary_kd, relation_loss, relation_matrix
from kd_engine.losses.terms import LOSSES
from kd_engine.metrics_extra import auroc, ece, hungarian_accuracy, multilabel_map
from kd_engine.parts.ema import EMATeacher, cosine_momentum


def _sig(z):
    return 1.0 / (1.0 + math.exp(-z))


def _bin_kl(p, q):
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


# ---- binary KD -------------------------------------------------------------------------------
def test_binary_kd_hand_computed():
    s = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    t = torch.tensor([[2.0, -2.0]], dtype=torch.float64)
    T = 2.0  # s/T = [0, 1], t/T = [1, -1]
    expected = T * T * (_bin_kl(_sig(1), _sig(0)) + _bin_kl(_sig(-1), _sig(1))) / 2
    assert binary_kd(s, t, temperature=T).item() == pytest.approx(expected, rel=1e-12)
    # equals soft BCE minus the teacher's entropy (mean over classes), times T²
    bce = torch.nn.functional.binary_cross_entropy_with_logits(s / T, torch.sigmoid(t / T))
    p = torch.sigmoid(t / T)
    h = -(p * p.log() + (1 - p) * (1 - p).log()).mean()
    assert binary_kd(s, t, temperature=T).item() == pytest.approx(T * T * (bce - h).item())


def test_binary_kd_zero_for_identical_and_reductions():
    z = torch.randn(5, 7) * 30  # large logits: still exactly zero, no NaN
    assert torch.equal(binary_kd(z, z.clone(), temperature=3.0, reduction="none"), torch.zeros(5))
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    per = binary_kd(s, t, reduction="none")
    assert per.shape == (6,) and (per >= 0).all()
    assert torch.allclose(per.mean(), binary_kd(s, t))
    assert torch.allclose(per.sum(), binary_kd(s, t, reduction="sum"))
    w = binary_kd(s, t, weight_power=2.0, reduction="none")
    assert (w <= per + 1e-7).all()  # |Δσ|² ≤ 1 only shrinks terms


def test_binary_kd_gradient_to_student_only():
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4, requires_grad=True)
    binary_kd(s, t, temperature=2.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
    assert LOSSES.get("binary_kd").inputs == "logits"


# ---- relation / affinity losses ---------------------------------------------------------------
def test_cosine_relation_matrix_hand_computed():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    r = 1 / math.sqrt(2)
    expected = torch.tensor([[1.0, 0.0, r], [0.0, 1.0, r], [r, r, 1.0]])
    assert torch.allclose(relation_matrix(x, "cosine"), expected, atol=1e-6)
    d = relation_matrix(x, "distance", normalize=False)
    assert torch.allclose(d, torch.tensor([[0, math.sqrt(2), 1], [math.sqrt(2), 0, 1],
                                           [1, 1, 0]]), atol=1e-6)
    pear = relation_matrix(torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 7.0], [3.0, 2.0, 1.0]]),
                           "pearson")
    ref = np.corrcoef(np.array([[1, 2, 3], [2, 4, 7], [3, 2, 1.0]]))
    assert np.allclose(pear.numpy(), ref, atol=1e-6)


@pytest.mark.parametrize("kind", ["cosine", "distance", "pearson"])
@pytest.mark.parametrize("distance", ["mse", "huber", "kl_rows"])
def test_relation_loss_properties(kind, distance):
    torch.manual_seed(0)
    s, t = torch.randn(6, 5), torch.randn(6, 8)
    assert relation_loss(t, t.clone(), kind, distance).item() == 0.0
    per = relation_loss(s, t, kind, distance, reduction="none")
    assert per.shape == (6,)
    assert torch.allclose(per.mean(), relation_loss(s, t, kind, distance))
    perm = torch.randperm(6)
    assert torch.allclose(relation_loss(s[perm], t[perm], kind, distance, reduction="none"),
                          per[perm], atol=1e-6)
    # an all-zero mask gives 0, not NaN; masked pairs do not matter
    zero = relation_loss(s, t, kind, distance, group_mask=torch.zeros(6, 6))
    assert zero.item() == 0.0
    # a same-group mask splits the loss into independent groups: the masked (cross-group)
    # pairs contribute nothing. mse/huber divide by the full row length B, kl_rows does not.
    groups = torch.tensor([0, 1, 0, 1, 1, 0])
    kw = dict(kind=kind, distance=distance, normalize=False, reduction="none")
    masked = relation_loss(s, t, group_mask=groups, **kw)
    for g in (0, 1):
        idx = (groups == g).nonzero().flatten()
        alone = relation_loss(s[idx], t[idx], **kw)
        scale = 1.0 if distance == "kl_rows" else len(idx) / 6
        assert torch.allclose(masked[idx], alone * scale, atol=1e-6)


def test_relation_loss_hand_value_and_gradient():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    t = torch.tensor([[1.0, 0.0], [1.0, 1.0]], requires_grad=True)
    # cosine matrices: S = I, T = [[1, r], [r, 1]]; MSE mean = 2 r² / 4
    r = 1 / math.sqrt(2)
    loss = relation_loss(s, t, "cosine", "mse")
    assert loss.item() == pytest.approx(2 * r * r / 4, rel=1e-6)
    loss.backward()
    assert s.grad is not None and t.grad is None
    spec = LOSSES.get("relation")
    assert spec.inputs == "embedding" and spec.batch_level


# ---- EMA teacher ------------------------------------------------------------------------------
class _One(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([w]))
        self.register_buffer("count", torch.tensor(0))

    def forward(self, x):
        return self.w * x


def test_ema_three_steps_by_hand():
    student = _One(1.0)
    ema = EMATeacher(student, momentum=0.5)
    assert not any(p.requires_grad for p in ema.module.parameters())
    # by hand, m = 0.5 from 1.0: 0.5·1 + 0.5·3 = 2; 0.5·2 + 0.5·5 = 3.5; 0.5·3.5 − 0.5·1 = 1.25
    for step, (w, expected) in enumerate([(3.0, 2.0), (5.0, 3.5), (-1.0, 1.25)], start=1):
        with torch.no_grad():
            student.w.fill_(w)
        student.count.fill_(step)
        ema.update(student)
        assert ema.module.w.item() == pytest.approx(expected)
        assert ema.module.count.item() == step  # buffers are copied, not averaged
    out = ema(torch.tensor([2.0]))
    assert not out.requires_grad and out.item() == pytest.approx(2 * expected)
    ema.update(student, momentum=1.0)  # m = 1 freezes the teacher
    assert ema.module.w.item() == pytest.approx(expected)
    assert student.w.requires_grad


def test_cosine_momentum_schedule():
    assert cosine_momentum(0, 100) == pytest.approx(0.996)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)
    assert cosine_momentum(50, 100) == pytest.approx(0.998)
    vals = [cosine_momentum(i, 10) for i in range(11)]
    assert all(a <= b for a, b in zip(vals, vals[1:]))


# ---- metrics ----------------------------------------------------------------------------------
def test_hungarian_accuracy():
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert hungarian_accuracy(labels, labels) == 1.0
    assert hungarian_accuracy(labels, np.array([2, 2, 0, 0, 1, 1])) == 1.0
    clusters = np.array([1, 1, 0, 2, 2, 2])  # best map 1→0, 0→1, 2→2: 5 of 6 right
    assert hungarian_accuracy(labels, clusters) == pytest.approx(5 / 6)
    rng = np.random.default_rng(0)
    y, c = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    base = hungarian_accuracy(y, c)
    for _ in range(5):
        relabel = rng.permutation(4)
        assert hungarian_accuracy(y, relabel[c]) == pytest.approx(base)
    # for the identity labelling it is at least plain accuracy, and equal when that is optimal
    assert base >= np.mean(y == c)
    y2 = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    c2 = np.array([0, 0, 1, 1, 1, 2, 2, 0])
    assert hungarian_accuracy(y2, c2) == pytest.approx(np.mean(y2 == c2))
    assert hungarian_accuracy(np.array([5, 5, 9]), np.array([7, 7, 7])) == pytest.approx(2 / 3)


def test_auroc_and_multilabel_map_hand():
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auroc(torch.tensor([1, 0]), torch.tensor([0.9, 0.1])) == 1.0
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]])
    scores = np.array([[0.9, 0.2, 0.5], [0.8, 0.7, 0.1], [0.3, 0.1, 0.4]])
    # label 0: ranks pos, neg, pos -> AP (1 + 2/3)/2; label 1: top-ranked pos -> 1; label 2 skipped
    assert multilabel_map(targets, scores) == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)


def test_ece():
    probs = np.array([[0.75, 0.25]] * 4 + [[0.5, 0.5]] * 2)
    labels = np.array([0, 0, 0, 1, 0, 1])  # bin 0.75: 3/4 right; bin 0.5: 1/2 right
    assert ece(probs, labels) == pytest.approx(0.0, abs=1e-12)
    # always confident (0.9), always right: ECE = 0.1
    assert ece(np.array([[0.9, 0.1]] * 3), np.array([0, 0, 0])) == pytest.approx(0.1)
    # two bins off by different amounts, weighted by their share of samples
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])  # bin 0.9: acc 0.5 (gap 0.4); bin 0.6: acc 1 (gap 0.4)
    assert ece(probs, labels, bins=10) == pytest.approx(0.4)
