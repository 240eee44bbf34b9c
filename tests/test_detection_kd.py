"""Zhang & Ma base distillation, per image and per FPN level: known answers for the mask and
attention math, and per-image independence of every term."""
import math

import pytest
import torch
from torch import nn

from kd_engine.losses.detection_kd import (TERMS, ZHANG_MA_DEFAULTS, FeatureDistillHead,
                                           NonLocalBlock, attention_masked_loss, attention_masks,
                                           attention_transfer_losses, channel_attention,
                                           channel_mask, spatial_attention, spatial_mask,
                                           weighted_kd)

LEVELS = ["p3", "p4", "p5"]


def feats(B=2, C=8, sizes=(8, 4, 1), seed=0):
    g = torch.Generator().manual_seed(seed)
    return {lv: torch.randn(B, C, s, s, generator=g) for lv, s in zip(LEVELS, sizes)}


def identity_adapters(C):
    g = nn.Linear(C, C)
    k = nn.Conv2d(1, 1, 3, padding=1)
    with torch.no_grad():
        g.weight.copy_(torch.eye(C))
        g.bias.zero_()
        k.weight.zero_()
        k.weight[0, 0, 1, 1] = 1.0
        k.bias.zero_()
    return g, k


def test_attention_known_values():
    a = torch.zeros(1, 2, 1, 2)
    a[0, 0, 0, 0], a[0, 1, 0, 0], a[0, 1, 0, 1] = -2.0, 4.0, 6.0  # |.| is used
    torch.testing.assert_close(spatial_attention(a), torch.tensor([[[3.0, 3.0]]]))
    torch.testing.assert_close(channel_attention(a), torch.tensor([[1.0, 5.0]]))
    b = torch.zeros(1, 1, 1, 2)
    b[0, 0, 0, 1] = 1.0  # attention 0 and 1; tau 0.5 -> softmax([0, 2]) * HW
    e = math.exp(2.0)
    torch.testing.assert_close(spatial_mask(b, 0.5),
                               torch.tensor([[[2 / (1 + e), 2 * e / (1 + e)]]]))
    torch.testing.assert_close(channel_mask(a, 1.0),
                               2 * torch.softmax(torch.tensor([[1.0, 5.0]]), 1))


def test_uniform_features_give_unit_masks():
    a = torch.full((2, 5, 4, 3), -0.7)
    for tau in (0.1, 0.5, 2.0):
        torch.testing.assert_close(spatial_mask(a, tau), torch.ones(2, 4, 3))
        torch.testing.assert_close(channel_mask(a, tau), torch.ones(2, 5))
    m = spatial_mask(torch.randn(3, 4, 5, 6), 0.3)
    torch.testing.assert_close(m.mean((1, 2)), torch.ones(3))  # HW * softmax has mean 1


def test_masks_are_averaged_and_detached():
    a_t, a_s = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3, requires_grad=True)
    m_sp, m_ch = attention_masks(a_t, a_s, 0.5)
    assert not m_sp.requires_grad and not m_ch.requires_grad
    torch.testing.assert_close(m_sp, 0.5 * (spatial_mask(a_t, 0.5) + spatial_mask(a_s, 0.5)))
    torch.testing.assert_close(m_ch, 0.5 * (channel_mask(a_t, 0.5) + channel_mask(a_s, 0.5)))


def test_attention_masked_loss_known_values():
    a_t = torch.randn(2, 3, 4, 4)
    a_s = (a_t.clone()).requires_grad_(True)
    m_sp, m_ch = attention_masks(a_t, a_s, 0.5)
    loss = attention_masked_loss(a_t, a_s, m_sp, m_ch)
    assert loss.shape == (2,) and torch.equal(loss, torch.zeros(2))
    loss.sum().backward()  # identical maps: zero loss and a finite gradient
    assert torch.isfinite(a_s.grad).all()
    ones_sp, ones_ch = torch.ones(2, 4, 4), torch.ones(2, 3)
    d = 0.5
    expect = torch.full((2,), d * math.sqrt(3 * 16))
    torch.testing.assert_close(attention_masked_loss(a_t, a_t - d, ones_sp, ones_ch), expect)
    torch.testing.assert_close(attention_masked_loss(a_t, a_t - d, ones_sp), expect)  # M_ch dropped
    sp = ones_sp.clone()
    sp[:, 0, 0] = 5.0  # one position weighted 5: 15 + 5 cells x d^2, per channel
    torch.testing.assert_close(attention_masked_loss(a_t, a_t - d, sp),
                               torch.full((2,), d * math.sqrt(3 * (15 + 5))))
    with pytest.raises(ValueError, match="differ"):
        attention_masked_loss(a_t, a_t[:, :2], ones_sp)


def test_attention_transfer_known_values():
    a_t = torch.randn(2, 6, 5, 5)
    g, k = identity_adapters(6)
    at_ch, at_sp = attention_transfer_losses(a_t, a_t.clone(), g, k)
    torch.testing.assert_close(at_ch, torch.zeros(2))
    torch.testing.assert_close(at_sp, torch.zeros(2))
    zero_g, zero_k = nn.Linear(6, 6), nn.Conv2d(1, 1, 3, padding=1)
    for m in (zero_g, zero_k):
        nn.init.zeros_(m.weight)
        nn.init.zeros_(m.bias)
    at_ch, at_sp = attention_transfer_losses(a_t, torch.randn(2, 6, 5, 5), zero_g, zero_k)
    torch.testing.assert_close(at_ch, a_t.mean((2, 3)).norm(dim=1))  # signed means, L2 norm
    torch.testing.assert_close(at_sp, a_t.mean(1).flatten(1).norm(dim=1))


def test_nonlocal_block_starts_as_identity_and_handles_small_maps():
    blk = NonLocalBlock(8, 2, pool=2)
    for size in (8, 3, 1):
        x = torch.randn(2, 8, size, size)
        torch.testing.assert_close(blk(x), x)  # zero-initialised BN weight in W
    with torch.no_grad():
        blk.W[1].weight.fill_(1.0)
    blk.eval()
    x = torch.randn(2, 8, 5, 5)
    assert not torch.allclose(blk(x), x)


def test_head_terms_shapes_and_switches():
    fs, ft = feats(), feats(seed=1)
    head = FeatureDistillHead(LEVELS, 8, tau=0.5)
    out = head(fs, ft)
    assert set(out) == set(TERMS)
    for term in TERMS:
        assert set(out[term]) == set(LEVELS)
        assert all(v.shape == (2,) and torch.isfinite(v).all() for v in out[term].values())
    assert "nl" not in FeatureDistillHead(LEVELS, 8, use_nonlocal=False)(fs, ft)
    no_ch = FeatureDistillHead(LEVELS, 8, use_channel_mask=False)
    no_ch.load_state_dict(head.state_dict())
    assert not torch.allclose(no_ch(fs, ft)["am"]["p3"], out["am"]["p3"])
    mixed = FeatureDistillHead(LEVELS, 4, channels_t=8)  # student narrower than teacher
    res = mixed({k: v[:, :4] for k, v in fs.items()}, ft)
    assert all(v.shape == (2,) for t in res.values() for v in t.values())
    with pytest.raises(KeyError, match="p6"):
        FeatureDistillHead(LEVELS + ["p6"], 8)(fs, ft)
    with pytest.raises(ValueError, match="channels_s"):
        FeatureDistillHead(LEVELS, [8, 8])


def test_identical_features_with_identity_adapters_give_zero():
    fs = feats()
    head = FeatureDistillHead(LEVELS, 8)
    with torch.no_grad():
        for lv in LEVELS:
            for conv in (head.adapt[lv], head.nl_adapt[lv]):
                conv.weight.copy_(torch.eye(8)[:, :, None, None])
                conv.bias.zero_()
            g, k = identity_adapters(8)
            head.channel_adapt[lv].load_state_dict(g.state_dict())
            head.spatial_adapt[lv].load_state_dict(k.state_dict())
    out = head(fs, {k: v.clone() for k, v in fs.items()})
    for term in ("am", "at_ch", "at_sp", "nl"):  # NL blocks start as identity
        for lv in LEVELS:
            torch.testing.assert_close(out[term][lv], torch.zeros(2), atol=1e-6, rtol=0)


def test_per_image_values_do_not_depend_on_the_batch():
    fs, ft = feats(), feats(seed=1)
    head = FeatureDistillHead(LEVELS, 8, nl_pool=[2, 2, 1])
    with torch.no_grad():  # make the NL blocks non-trivial, then use running stats
        for blk in list(head.nl_t.values()) + list(head.nl_s.values()):
            blk.W[1].weight.normal_()
    head.eval()
    both = head(fs, ft)
    for b in range(2):
        one = head({k: v[b:b + 1] for k, v in fs.items()}, {k: v[b:b + 1] for k, v in ft.items()})
        for term in TERMS:
            for lv in LEVELS:
                torch.testing.assert_close(one[term][lv][0], both[term][lv][b])


def test_gradients_reach_student_and_head_not_teacher():
    fs = {k: v.requires_grad_(True) for k, v in feats().items()}
    ft = {k: v.requires_grad_(True) for k, v in feats(seed=1).items()}
    head = FeatureDistillHead(LEVELS, 8)
    with torch.no_grad():
        for blk in head.nl_t.values():
            blk.W[1].weight.fill_(0.1)
    weighted_kd(head(fs, ft), ZHANG_MA_DEFAULTS["single_stage_baseline"]).mean().backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in fs.values())
    assert all(v.grad is None for v in ft.values())
    assert head.adapt["p3"].weight.grad.abs().sum() > 0
    assert head.nl_t["p3"].theta.weight.grad is not None


def test_weighted_kd_and_defaults():
    terms = {t: {lv: torch.rand(3) for lv in LEVELS} for t in TERMS}
    lam = {"am": 2.0, "at_ch": 0.5, "at_sp": 0.0, "nl": 1.0, "tau": 0.1}
    w = torch.rand(3, 3)
    expect = sum(w[:, i] * (2 * terms["am"][lv] + 0.5 * terms["at_ch"][lv] + terms["nl"][lv])
                 for i, lv in enumerate(LEVELS))
    torch.testing.assert_close(weighted_kd(terms, lam, w), expect)
    torch.testing.assert_close(weighted_kd(terms, lam), weighted_kd(terms, lam, torch.ones(3, 3)))
    torch.testing.assert_close(weighted_kd(terms, lam, w[:, 0]),
                               w[:, 0] * weighted_kd(terms, lam))
    assert ZHANG_MA_DEFAULTS["single_stage_baseline"]["tau"] == 0.1
    assert ZHANG_MA_DEFAULTS["two_stage_baseline"]["tau"] == 0.5
    for row in ZHANG_MA_DEFAULTS.values():
        assert set(row) == {"tau", *TERMS}


def test_head_on_detector_features():
    from kd_engine.losses.detection_teacher import teacher_losses
    from kd_engine.models.detection import build_detector
    torch.manual_seed(0)
    teacher = build_detector("retinanet", 64, 4, width=8, depth=1, fpn_channels=16).eval()
    student = build_detector("retinanet", 64, 4, width=4, depth=1, fpn_channels=8)
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 20.0]]), "labels": torch.tensor([1])}] * 2
    t = teacher_losses(teacher, images, targets)
    fs = student.backbone(student.transform(images)[0].tensors)
    head = FeatureDistillHead(t.levels, 8, channels_t=16)
    out = head(fs, t.features)
    total = weighted_kd(out, ZHANG_MA_DEFAULTS["reimplementation"], torch.exp(-0.1 * t.total_level))
    assert total.shape == (2,) and torch.isfinite(total).all()
