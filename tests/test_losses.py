"""Known-answer, limit, reduction and gradient tests for kd_engine.losses."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kd_engine.losses import (
    attention_transfer, cs_divergence, dist, dkd, dkd_parts, fitnet, kd, reduce, rkd,
)
from kd_engine.losses.logit import _cs_from_probs


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def smooth_l1(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def rand_logits(b=6, c=5, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, generator=g) * scale, torch.randn(b, c, generator=g) * scale,
            torch.randint(0, c, (b,), generator=g))


# Each case: (loss fn, builder(seed) -> (student, teacher, kwargs)).
def _logit_case(seed):
    s, t, y = rand_logits(seed=seed)
    return s, t, {}


def _feat_case(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 6, 5, 5, generator=g), {}


def _same_feat_case(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g), {}


def _emb_case(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(5, 8, generator=g), torch.randn(5, 4, generator=g), {}


def _dkd_case(seed):
    s, t, y = rand_logits(seed=seed)
    return s, t, {"target": y}


CASES = {
    "kd": (kd, _logit_case),
    "dkd": (dkd, _dkd_case),
    "dist": (dist, _logit_case),
    "cs": (cs_divergence, _logit_case),
    "at": (attention_transfer, _feat_case),
    "fitnet": (fitnet, _same_feat_case),
    "rkd": (rkd, _emb_case),
}


# ---------------------------------------------------------------- known answers by hand
def test_kd_two_class_by_hand():
    s, t, T = [0.0, 1.0], [1.0, -0.5], 2.0
    p = softmax([x / T for x in t])
    q = softmax([x / T for x in s])
    expected = T * T * kl(p, q)
    got = kd(torch.tensor([s]), torch.tensor([t]), temperature=T)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_dkd_parts_three_class_by_hand():
    s, t, T = [1.0, 2.0, 3.0], [3.0, 1.0, 0.0], 2.0
    ps, pt = softmax([x / T for x in s]), softmax([x / T for x in t])
    tckd = T * T * kl([pt[0], 1 - pt[0]], [ps[0], 1 - ps[0]])
    nckd = T * T * kl(softmax([x / T for x in t[1:]]), softmax([x / T for x in s[1:]]))
    got_t, got_n = dkd_parts(torch.tensor([s]), torch.tensor([t]), torch.tensor([0]), T)
    assert got_t.item() == pytest.approx(tckd, rel=1e-5)
    assert got_n.item() == pytest.approx(nckd, rel=1e-5)
    total = dkd(torch.tensor([s]), torch.tensor([t]), torch.tensor([0]),
                alpha=0.5, beta=3.0, temperature=T)
    assert total.item() == pytest.approx(0.5 * tckd + 3.0 * nckd, rel=1e-5)


def test_dkd_target_in_middle_by_hand():
    s, t = [0.5, -1.0, 2.0], [1.0, 2.0, -1.0]
    ps, pt = softmax(s), softmax(t)
    tckd = kl([pt[1], 1 - pt[1]], [ps[1], 1 - ps[1]])
    nckd = kl(softmax([t[0], t[2]]), softmax([s[0], s[2]]))
    got_t, got_n = dkd_parts(torch.tensor([s]), torch.tensor([t]), torch.tensor([1]), 1.0)
    assert got_t.item() == pytest.approx(tckd, rel=1e-5)
    assert got_n.item() == pytest.approx(nckd, rel=1e-5)


def test_cs_divergence_by_hand():
    s, t, T = [0.0, 2.0, -1.0], [1.0, 0.0, 0.5], 1.5
    p, q = softmax([x / T for x in t]), softmax([x / T for x in s])
    eps = 1e-8
    expected = (-math.log(sum(a * b for a, b in zip(p, q)) + eps)
                + 0.5 * math.log(sum(a * a for a in p) + eps)
                + 0.5 * math.log(sum(b * b for b in q) + eps))
    got = cs_divergence(torch.tensor([s]), torch.tensor([t]), temperature=T)
    assert expected > 0.01
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_rkd_three_points_by_hand():
    teacher = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # sides 3, 4, 5
    student = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # sides 1, 1, sqrt 2
    mt, ms = 4.0, (2 + math.sqrt(2)) / 3
    dt = [[0, 3, 4], [3, 0, 5], [4, 5, 0]]
    ds = [[0, 1, 1], [1, 0, math.sqrt(2)], [1, math.sqrt(2), 0]]
    dist_rows = [sum(smooth_l1(ds[i][j] / ms - dt[i][j] / mt) for j in range(3)) / 3
                 for i in range(3)]
    # Cosine at each vertex: teacher 0, 3/5, 4/5; student 0, 1/sqrt2, 1/sqrt2. Anchor i owns
    # 9 entries (j, k); only (j, k) and (k, j) with j != k, both != i, differ.
    cos_t, cos_s = [0.0, 0.6, 0.8], [0.0, 1 / math.sqrt(2), 1 / math.sqrt(2)]
    angle_rows = [2 * smooth_l1(cos_s[i] - cos_t[i]) / 9 for i in range(3)]
    got = rkd(student, teacher, distance_weight=25.0, angle_weight=50.0, reduction="none")
    expected = [25.0 * d + 50.0 * a for d, a in zip(dist_rows, angle_rows)]
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    only_d = rkd(student, teacher, distance_weight=1.0, angle_weight=0.0)
    assert only_d.item() == pytest.approx(sum(dist_rows) / 3, rel=1e-5)
    only_a = rkd(student, teacher, distance_weight=0.0, angle_weight=1.0)
    assert only_a.item() == pytest.approx(sum(angle_rows) / 3, rel=1e-5)


def test_rkd_is_scale_invariant_and_flattens():
    s, t, _ = _emb_case(3)
    assert rkd(t * 7.0, t).item() == pytest.approx(0.0, abs=1e-5)
    s4 = s.view(5, 2, 2, 2)
    assert rkd(s4, t).item() == pytest.approx(rkd(s, t).item(), rel=1e-6)


def test_attention_transfer_by_hand():
    student = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[1.0, 0.0], [1.0, 0.0]]]])  # C=2
    teacher = torch.ones(1, 1, 2, 2)  # C=1: map is 0.5 everywhere
    a = [1.0, 2.0, 5.0, 8.0]  # channel means of squares
    n = math.sqrt(sum(x * x for x in a))
    expected = sum((x / n - 0.5) ** 2 for x in a) / 4
    got = attention_transfer(student, teacher, p=2)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # single-channel case from the brief: 1x1x2x2
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    n1 = math.sqrt(1 + 16 + 81 + 256)
    exp1 = sum((x / n1 - 0.5) ** 2 for x in [1, 4, 9, 16]) / 4
    assert attention_transfer(f, teacher).item() == pytest.approx(exp1, rel=1e-5)


def test_fitnet_by_hand_and_adapter():
    s = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    t = torch.tensor([[0.0, 0.0], [3.0, -1.0]])
    assert fitnet(s, t, reduction="none").tolist() == pytest.approx([2.5, 5.0])
    adapter = lambda x: 2 * x  # noqa: E731
    assert fitnet(s, t, adapter=adapter, reduction="none").tolist() == pytest.approx([10.0, 5.0])
    lin = torch.nn.Linear(3, 2)
    out = fitnet(torch.randn(4, 3), torch.randn(4, 2), adapter=lin)
    out.backward()
    assert lin.weight.grad is not None


def test_dist_matches_numpy_corrcoef():
    s, t, _ = rand_logits(b=7, c=4, seed=5)
    T, beta, gamma = 2.0, 0.7, 1.3
    ps = torch.softmax(s / T, 1).double().numpy()
    pt = torch.softmax(t / T, 1).double().numpy()
    inter = np.array([1 - np.corrcoef(ps[i], pt[i])[0, 1] for i in range(7)])
    intra = np.mean([1 - np.corrcoef(ps[:, c], pt[:, c])[0, 1] for c in range(4)])
    expected_none = T * T * (beta * inter + gamma * intra)
    got = dist(s, t, beta=beta, gamma=gamma, temperature=T, reduction="none")
    np.testing.assert_allclose(got.numpy(), expected_none, rtol=1e-4, atol=1e-5)
    batch = T * T * (beta * inter.mean() + gamma * intra)
    assert dist(s, t, beta=beta, gamma=gamma, temperature=T).item() == pytest.approx(
        batch, rel=1e-4)


# ---------------------------------------------------------------- limits and identities
@pytest.mark.parametrize("name", sorted(CASES))
def test_identical_inputs_give_zero(name):
    fn, build = CASES[name]
    s, _, kw = build(1)
    out = fn(s, s.clone(), **kw, reduction="none")
    assert torch.allclose(out, torch.zeros_like(out), atol=1e-5), out


def test_kd_at_t1_is_plain_kl():
    s, t, _ = rand_logits(seed=2)
    ref = F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="batchmean")
    assert kd(s, t, temperature=1.0).item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_equals_tckd_plus_weighted_nckd(T):
    s, t, y = rand_logits(b=16, c=10, seed=7, scale=3.0)
    tckd, nckd = dkd_parts(s, t, y, temperature=T)
    p_target = torch.softmax(t / T, 1).gather(1, y[:, None]).squeeze(1)
    rebuilt = tckd + (1 - p_target) * nckd
    assert torch.allclose(kd(s, t, temperature=T, reduction="none"), rebuilt, atol=1e-5)


def test_dkd_is_stable_for_confident_teacher():
    s = torch.tensor([[0.0, 1.0, -1.0]], requires_grad=True)
    t = torch.tensor([[200.0, 0.0, 0.0]])
    out = dkd(s, t, torch.tensor([0]), temperature=1.0)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(s.grad).all()


def test_cs_symmetric_shift_and_scale_invariant_nonnegative():
    s, t, _ = rand_logits(b=32, c=7, seed=11, scale=4.0)
    assert torch.allclose(cs_divergence(s, t, reduction="none"),
                          cs_divergence(t, s, reduction="none"), atol=1e-6)
    assert torch.allclose(cs_divergence(s + 5.0, t - 3.0, reduction="none"),
                          cs_divergence(s, t, reduction="none"), atol=1e-5)
    p, q = torch.softmax(t, 1).double(), torch.softmax(s, 1).double()
    assert torch.allclose(_cs_from_probs(3.0 * p, 0.25 * q), _cs_from_probs(p, q), atol=1e-6)
    for seed in range(5):
        a, b, _ = rand_logits(b=64, c=5, seed=100 + seed, scale=6.0)
        assert (cs_divergence(a, b, temperature=0.5, reduction="none") >= -1e-6).all()
    assert cs_divergence(s, t).item() > 0.01


# ---------------------------------------------------------------- reductions
@pytest.mark.parametrize("name", sorted(CASES))
def test_reductions_consistent(name):
    fn, build = CASES[name]
    s, t, kw = build(4)
    none = fn(s, t, **kw, reduction="none")
    assert none.shape == (s.shape[0],)
    assert fn(s, t, **kw, reduction="mean").item() == pytest.approx(none.mean().item(), rel=1e-5)
    assert fn(s, t, **kw, reduction="sum").item() == pytest.approx(none.sum().item(), rel=1e-5)
    assert fn(s, t, **kw).item() == pytest.approx(none.mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="bogus"):
        fn(s, t, **kw, reduction="bogus")


def test_reduce_helper():
    x = torch.tensor([1.0, 2.0, 6.0])
    assert reduce(x, "mean").item() == 3.0 and reduce(x, "sum").item() == 9.0
    assert reduce(x, "none") is x
    with pytest.raises(ValueError, match="'avg'"):
        reduce(x, "avg")


def test_batch_level_flags_and_mean_of_none():
    assert dist.batch_level is True and rkd.batch_level is True
    assert kd.batch_level is False
    s, t, _ = rand_logits(b=9, c=6, seed=8)
    assert dist(s, t, reduction="none").mean().item() == pytest.approx(dist(s, t).item(),
                                                                         rel=1e-6)
    e_s, e_t, _ = _emb_case(9)
    assert rkd(e_s, e_t, reduction="none").mean().item() == pytest.approx(rkd(e_s, e_t).item(),
                                                                            rel=1e-6)


# ---------------------------------------------------------------- gradients and errors
@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_flows_to_student_only(name):
    fn, build = CASES[name]
    s, t, kw = build(6)
    s.requires_grad_(True)
    t.requires_grad_(True)
    fn(s, t, **kw).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


def test_fitnet_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        fitnet(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="adapted"):
        fitnet(torch.zeros(2, 3), torch.zeros(2, 4), adapter=lambda x: x[:, :2])


def test_attention_transfer_spatial_mismatch():
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(2, 3, 8, 8\)"):
        attention_transfer(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 8, 8))


def test_logit_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        kd(torch.zeros(2, 3), torch.zeros(2, 4))
