"""Known-answer tests for the catalogue losses (PKT, SP, CC, NST, KDSVD, VID, OFD, ReviewKD's HCL,
CRD's NCE) and logit standardisation. References are written with numpy/scipy loops from the
papers' formulas, independently of the torch code."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from kd_engine.errors import ConfigError
from kd_engine.losses import (cc, crd, hcl, kd, kdsvd, nce, nst, ofd, ofd_margin, pkt,
                              similarity_preserving, standardize_logits, vid)
from kd_engine.losses.terms import LOSSES


def rng_tensor(*shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).normal(size=shape))  # float64


# ------------------------------------------------------------------ numpy references
def ref_pkt(s, t, eps=1e-7):
    def probs(x):
        unit = x / (np.linalg.norm(x, axis=1, keepdims=True) + eps)
        b = len(x)
        k = np.array([[(unit[i] @ unit[j] + 1) / 2 for j in range(b)] for i in range(b)])
        return k / k.sum(axis=1, keepdims=True)
    ps, pt = probs(s.reshape(len(s), -1)), probs(t.reshape(len(t), -1))
    b = len(s)
    total = sum(pt[i, j] * math.log((pt[i, j] + eps) / (ps[i, j] + eps)) for i in range(b) for j in range(b))
    return total / b ** 2


def ref_sp(s, t):
    def gram(x):
        q = x.reshape(len(x), -1)
        g = q @ q.T
        return g / np.linalg.norm(g, axis=1, keepdims=True)
    return float(((gram(s) - gram(t)) ** 2).sum() / len(s) ** 2)


def ref_nst(s, t):
    """MMD² with k(x, y) = (xᵀy)² over unit channel vectors, averaged over the batch (same H, W)."""
    out = []
    for sb, tb in zip(s, t):
        fs = [c.ravel() / np.linalg.norm(c) for c in sb]
        ft = [c.ravel() / np.linalg.norm(c) for c in tb]
        k = lambda a, b: float(a @ b) ** 2  # noqa: E731
        tt = np.mean([k(a, b) for a in ft for b in ft])
        ss = np.mean([k(a, b) for a in fs for b in fs])
        st = np.mean([k(a, b) for a in fs for b in ft])
        out.append(tt + ss - 2 * st)
    return float(np.mean(out))


def block_mean(x, f):
    b, c, h, w = x.shape
    return x.reshape(b, c, h // f, f, w // f, f).mean(axis=(3, 5))


# ------------------------------------------------------------------ PKT
def test_pkt_matches_reference_on_float64():
    s, t = rng_tensor(6, 5, seed=1), rng_tensor(6, 9, seed=2)
    assert pkt(s, t).item() == pytest.approx(ref_pkt(s.numpy(), t.numpy()), abs=1e-10)


def test_pkt_two_samples_by_hand():
    # student orthogonal (cos 0 -> kernel 1/2 off the diagonal), teacher parallel (cos 1 -> 1):
    # rows p_s = (2/3, 1/3), p_t = (1/2, 1/2); each row's KL is ½·log(9/8); mean over 4 entries.
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    t = torch.tensor([[1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    row_kl = 0.5 * math.log(0.5 / (2 / 3)) + 0.5 * math.log(0.5 / (1 / 3))
    assert row_kl == pytest.approx(0.5 * math.log(9 / 8))
    assert pkt(s, t, reduction="none").tolist() == pytest.approx([row_kl / 2] * 2, abs=1e-6)
    assert pkt(s, t).item() == pytest.approx(row_kl / 2, abs=1e-6)


def test_pkt_zero_for_same_cosine_geometry():
    t = rng_tensor(5, 4, seed=3)
    assert pkt(t.clone(), t).item() == pytest.approx(0.0, abs=1e-12)
    assert pkt(3.0 * t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert pkt(-t, t).item() == pytest.approx(0.0, abs=1e-12)  # negating all rows keeps every cosine
    flipped = t.clone()
    flipped[0] = -flipped[0]  # negating one row changes its cosines with the others
    assert pkt(flipped, t).item() > 1e-3


# ------------------------------------------------------------------ similarity preserving
def test_sp_matches_reference_and_hand_case():
    s, t = rng_tensor(5, 3, 4, 4, seed=4), rng_tensor(5, 7, 2, 2, seed=5)
    assert similarity_preserving(s, t).item() == pytest.approx(ref_sp(s.numpy(), t.numpy()), abs=1e-12)
    # G_S = I, G̃_T = all 1/√2: each row's squared error is 2 − √2, batch loss 2(2 − √2) / 4.
    s2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    t2 = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    assert similarity_preserving(s2, t2).item() == pytest.approx((2 - math.sqrt(2)) / 2, abs=1e-9)
    assert similarity_preserving(s2, t2, reduction="none").tolist() == pytest.approx(
        [(2 - math.sqrt(2)) / 2] * 2, abs=1e-9)


def test_sp_invariant_to_a_shared_permutation_of_positions_and_zero_for_identical():
    s, t = rng_tensor(4, 3, 5, 5, seed=6), rng_tensor(4, 6, 5, 5, seed=7)
    perm_s = torch.from_numpy(np.random.default_rng(8).permutation(3 * 25))
    perm_t = torch.from_numpy(np.random.default_rng(9).permutation(6 * 25))
    base = similarity_preserving(s, t).item()
    moved = similarity_preserving(s.flatten(1)[:, perm_s], t.flatten(1)[:, perm_t]).item()
    assert moved == pytest.approx(base, abs=1e-12)
    assert base > 1e-3
    assert similarity_preserving(t, t).item() == pytest.approx(0.0, abs=1e-14)


# ------------------------------------------------------------------ NST
def test_nst_matches_reference_and_frobenius_identity():
    s, t = rng_tensor(3, 4, 3, 3, seed=10), rng_tensor(3, 6, 3, 3, seed=11)
    got = nst(s, t).item()
    assert got == pytest.approx(ref_nst(s.numpy(), t.numpy()), abs=1e-12)
    # MMD² with (xᵀy)² equals ‖mean_j s_j s_jᵀ − mean_i t_i t_iᵀ‖²_F per sample
    per = []
    for sb, tb in zip(s.numpy(), t.numpy()):
        fs = sb.reshape(4, -1) / np.linalg.norm(sb.reshape(4, -1), axis=1, keepdims=True)
        ft = tb.reshape(6, -1) / np.linalg.norm(tb.reshape(6, -1), axis=1, keepdims=True)
        per.append(((fs.T @ fs) / 4 - (ft.T @ ft) / 6) ** 2)
    assert got == pytest.approx(float(np.mean([p.sum() for p in per])), abs=1e-12)


def test_nst_pools_the_larger_map_and_is_scale_invariant():
    s, t = rng_tensor(2, 3, 4, 4, seed=12), rng_tensor(2, 5, 2, 2, seed=13)
    expected = ref_nst(block_mean(s.numpy(), 2), t.numpy())
    assert nst(s, t).item() == pytest.approx(expected, abs=1e-12)
    assert nst(t, s).item() == pytest.approx(ref_nst(t.numpy(), block_mean(s.numpy(), 2)), abs=1e-12)
    assert nst(5.0 * s, 0.1 * t).item() == pytest.approx(nst(s, t).item(), abs=1e-12)
    assert nst(t, t).item() == pytest.approx(0.0, abs=1e-12)
    assert nst(s, t).item() > 1e-3
    flat_s, flat_t = s.flatten(2), block_mean(t.numpy(), 1).reshape(2, 5, 4)
    assert nst(flat_s[:, :, :4], torch.from_numpy(flat_t)).item() == pytest.approx(
        ref_nst(flat_s[:, :, :4].numpy()[..., None], flat_t[..., None]), abs=1e-12)  # (B, C, L) maps too


# ------------------------------------------------------------------ CC
def test_cc_taylor_kernel_by_numpy_and_its_limit():
    s, t = rng_tensor(5, 6, seed=14), rng_tensor(5, 3, seed=15)
    gamma = 0.4

    def psi(x, order):
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        c = u @ u.T
        return math.exp(-2 * gamma) * sum((2 * gamma) ** p / math.factorial(p) * c ** p for p in range(order + 1))

    expected = ((psi(s.numpy(), 2) - psi(t.numpy(), 2)) ** 2).sum() / 25
    assert cc(s, t).item() == pytest.approx(expected, abs=1e-12)
    # a long expansion is the exact Gaussian RBF exp(−γ‖x − y‖²) on unit vectors
    def rbf(x):
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        return np.exp(-gamma * ((u[:, None, :] - u[None, :, :]) ** 2).sum(-1))
    exact = ((rbf(s.numpy()) - rbf(t.numpy())) ** 2).sum() / 25
    assert cc(s, t, order=25).item() == pytest.approx(exact, rel=1e-9)
    assert cc(t, t).item() == pytest.approx(0.0, abs=1e-14)


# ------------------------------------------------------------------ KDSVD
def ref_kdsvd(s_maps, t_maps, sigma=8.0):
    """k = 1: top right singular vector of each (HW, C) matrix, sign so its left partner sums ≥ 0."""
    def top(x):
        u, _, vh = np.linalg.svd(x.reshape(x.shape[0], -1).T, full_matrices=False)
        return vh[0] * (1.0 if u[:, 0].sum() >= 0 else -1.0)
    per = np.zeros(len(s_maps[0]))
    for b in range(len(per)):
        for a in range(len(s_maps) - 1):
            vs1, vs2 = top(s_maps[a][b]), top(s_maps[a + 1][b])
            vt1, vt2 = top(t_maps[a][b]), top(t_maps[a + 1][b])
            gs = np.exp(-(vs1[:, None] - vs2[None, :]) ** 2 / sigma)
            gt = np.exp(-(vt1[:, None] - vt2[None, :]) ** 2 / sigma)
            per[b] += ((gs - gt) ** 2).sum()
    return per


def test_kdsvd_matches_numpy_svd_and_is_scale_invariant():
    s = [rng_tensor(3, 4, 4, 4, seed=16), rng_tensor(3, 6, 2, 2, seed=17)]
    t = [rng_tensor(3, 4, 6, 6, seed=18), rng_tensor(3, 6, 3, 3, seed=19)]
    got = kdsvd(s, t, reduction="none")
    assert got.tolist() == pytest.approx(ref_kdsvd([x.numpy() for x in s], [x.numpy() for x in t]).tolist(), abs=1e-9)
    assert kdsvd([2.0 * x for x in s], t).item() == pytest.approx(got.mean().item(), abs=1e-9)
    assert kdsvd(t, t).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        kdsvd(s[:1], t[:1])


# ------------------------------------------------------------------ VID
def test_vid_gaussian_nll_by_numpy():
    mu, t = rng_tensor(2, 3, 2, 2, seed=20), rng_tensor(2, 3, 2, 2, seed=21)
    var = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    v = var.numpy()[None, :, None, None]
    expected = (0.5 * ((t.numpy() - mu.numpy()) ** 2 / v + np.log(v))).reshape(2, -1).mean(1)
    assert vid(mu, t, var, reduction="none").tolist() == pytest.approx(expected.tolist(), abs=1e-12)
    # at μ = t only ½·log σ² is left: zero at σ² = 1
    assert vid(t, t, torch.ones(3, dtype=torch.float64)).item() == pytest.approx(0.0, abs=1e-14)


# ------------------------------------------------------------------ OFD
def test_ofd_margin_is_the_truncated_normal_mean():
    mean = torch.tensor([0.0, 0.5, -1.0, 1.0], dtype=torch.float64)
    std = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
    expected = [stats.truncnorm.mean(-np.inf, (0 - m) / s, loc=m, scale=s)
                for m, s in zip(mean.tolist(), std.tolist())]
    assert ofd_margin(mean, std).tolist() == pytest.approx(expected, rel=1e-9)
    # almost no mass below zero (Φ(−μ/σ) < 10⁻³): the −3σ fallback
    assert ofd_margin(torch.tensor([5.0]), torch.tensor([1.0])).item() == pytest.approx(-3.0)


def test_ofd_partial_l2_by_hand():
    margin = torch.tensor([-1.0])
    # (student, teacher): target max(t, −1); counted when s > target or target > 0
    pairs = [(2.0, 1.0), (0.0, 1.0), (-3.0, -2.0), (-0.5, -2.0), (-2.0, -0.5), (0.5, -0.5)]
    s = torch.tensor([[[p[0] for p in pairs]]]).view(1, 1, 6)
    t = torch.tensor([[[p[1] for p in pairs]]]).view(1, 1, 6)
    # targets 1, 1, −1, −1, −0.5, −0.5; counted: yes, yes, no, yes, no, yes
    expected = 1.0 + 1.0 + 0.0 + 0.25 + 0.0 + 1.0
    assert ofd(s, t, margin).item() == pytest.approx(expected)


# ------------------------------------------------------------------ ReviewKD's HCL
def test_hcl_pyramid_by_numpy():
    s, t = rng_tensor(2, 3, 4, 4, seed=22), rng_tensor(2, 3, 4, 4, seed=23)
    sn, tn = s.numpy(), t.numpy()
    # levels (4, 2, 1) on a 4×4 map: 4 is skipped (not smaller); weights 1, ½, ¼
    mse = lambda a, b: ((a - b) ** 2).reshape(len(a), -1).mean(1)  # noqa: E731
    expected = (mse(sn, tn) + 0.5 * mse(block_mean(sn, 2), block_mean(tn, 2))
                + 0.25 * mse(block_mean(sn, 4), block_mean(tn, 4))) / 1.75
    assert hcl([s], [t], reduction="none").tolist() == pytest.approx(expected.tolist(), abs=1e-12)
    assert hcl([s, s], [t, t]).item() == pytest.approx(2 * expected.mean(), abs=1e-12)
    assert hcl([t], [t]).item() == 0.0


# ------------------------------------------------------------------ CRD
def test_nce_by_hand():
    scores = torch.tensor([[2.0, 0.5, 1.0]], dtype=torch.float64)
    n, k = 10, 2
    pn = k / n
    expected = -(math.log(2.0 / (2.0 + pn)) + math.log(pn / (0.5 + pn)) + math.log(pn / (1.0 + pn)))
    assert nce(scores, n).item() == pytest.approx(expected, abs=1e-6)


def test_crd_both_directions_by_hand():
    f_s = torch.nn.functional.normalize(rng_tensor(2, 3, seed=24), dim=1)
    f_t = torch.nn.functional.normalize(rng_tensor(2, 3, seed=25), dim=1)
    mem_s, mem_t = rng_tensor(2, 3, 3, seed=26), rng_tensor(2, 3, 3, seed=27)
    tau, n, z_s, z_t = 0.5, 8, 3.0, 4.0
    expected = []
    for i in range(2):
        a = [math.exp(float(mem_t[i, j] @ f_s[i]) / tau) / z_s for j in range(3)]
        b = [math.exp(float(mem_s[i, j] @ f_t[i]) / tau) / z_t for j in range(3)]
        expected.append(nce(torch.tensor([a]), n).item() + nce(torch.tensor([b]), n).item())
    got = crd(f_s, f_t, mem_s, mem_t, z_s, z_t, n, tau, reduction="none")
    assert got.tolist() == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------ logit standardisation
def test_standardize_is_a_population_z_score_and_kd_ignores_affine_changes():
    z = rng_tensor(4, 7, seed=28)
    zn = z.numpy()
    expected = (zn - zn.mean(1, keepdims=True)) / zn.std(1, keepdims=True)  # numpy std: population
    assert standardize_logits(z).numpy() == pytest.approx(expected, abs=1e-6)
    dense = rng_tensor(2, 5, 3, 3, seed=31).numpy()  # dense logits: over classes at each position
    expected_dense = (dense - dense.mean(1, keepdims=True)) / dense.std(1, keepdims=True)
    assert standardize_logits(torch.from_numpy(dense)).numpy() == pytest.approx(expected_dense, abs=1e-6)
    s, t = rng_tensor(4, 7, seed=29), rng_tensor(4, 7, seed=30)
    fn = LOSSES.get("kd").fn
    base = fn(s, t, temperature=2.0, standardize=True).item()
    shifted = fn(3.0 * s + 5.0, 0.2 * t - 1.0, temperature=2.0, standardize=True).item()
    assert shifted == pytest.approx(base, rel=1e-6)
    assert fn(s, t, temperature=2.0).item() == pytest.approx(kd(s, t, 2.0).item())  # off by default
    assert fn(3.0 * s, t, temperature=2.0).item() != pytest.approx(kd(s, t, 2.0).item())


@pytest.mark.parametrize("name", ["kd", "dkd", "dist", "cs", "binary_kd"])
def test_every_logit_term_takes_standardize(name):
    LOSSES.get(name).check_params({"standardize": True}, "distill.terms.0.params")


# ------------------------------------------------------------------ shared contracts
def _pure_cases():
    s4, t4 = rng_tensor(4, 3, 4, 4, seed=31), rng_tensor(4, 5, 4, 4, seed=32)
    e_s, e_t = rng_tensor(4, 6, seed=33), rng_tensor(4, 3, seed=34)
    same_s, same_t = rng_tensor(4, 3, 4, 4, seed=35), rng_tensor(4, 3, 4, 4, seed=36)
    var = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    return {
        "pkt": (pkt, e_s, e_t, {}),
        "sp": (similarity_preserving, s4, t4, {}),
        "cc": (cc, e_s, e_t, {}),
        "nst": (nst, s4, t4, {}),
        "vid": (lambda s, t, reduction: vid(s, t, var, reduction=reduction), same_s, same_t, {}),
        "ofd": (lambda s, t, reduction: ofd(s, t, torch.full((3,), -0.5, dtype=torch.float64),
                                            reduction=reduction), same_s, same_t, {}),
        "hcl": (lambda s, t, reduction: hcl([s], [t], reduction=reduction), same_s, same_t, {}),
        "kdsvd": (lambda s, t, reduction: kdsvd([s, s[:, :, :2, :2]], [t, t[:, :, :2, :2]], reduction=reduction),
                  same_s, same_t, {}),
    }


@pytest.mark.parametrize("case", list(_pure_cases()))
def test_reductions_and_gradients_reach_only_the_student(case):
    fn, s, t, kwargs = _pure_cases()[case]
    none = fn(s, t, reduction="none", **kwargs)
    assert none.shape == (s.size(0),)
    assert fn(s, t, reduction="mean", **kwargs).item() == pytest.approx(none.mean().item(), abs=1e-12)
    assert fn(s, t, reduction="sum", **kwargs).item() == pytest.approx(none.sum().item(), abs=1e-12)
    s, t = s.clone().requires_grad_(True), t.clone().requires_grad_(True)
    fn(s, t, reduction="mean", **kwargs).backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0
    assert t.grad is None


def test_bad_reduction_and_mismatched_batches_are_refused():
    with pytest.raises(ValueError, match="reduction"):
        pkt(rng_tensor(3, 2), rng_tensor(3, 2), reduction="avg")
    with pytest.raises(ValueError, match="same batch size"):
        similarity_preserving(rng_tensor(3, 2), rng_tensor(4, 2))
    with pytest.raises(ValueError, match="nst needs"):
        nst(rng_tensor(3, 2), rng_tensor(3, 2))


@pytest.mark.parametrize("name,kind", [("pkt", "embedding"), ("similarity_preserving", "embedding"),
                                       ("cc", "embedding"), ("nst", "maps"), ("vid", "module"),
                                       ("ofd", "module"), ("kdsvd", "module"), ("reviewkd", "module"),
                                       ("crd", "module")])
def test_registered_with_input_kind_and_checked_params(name, kind):
    spec = LOSSES.get(name)
    assert spec.inputs == kind and spec.uses_layers
    with pytest.raises(ConfigError, match="unknown parameter 'bogus'"):
        spec.check_params({"bogus": 1}, "distill.terms.0.params")
