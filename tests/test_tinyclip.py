"""TinyCLIP's parts: the image–text losses (known answers from numpy/SciPy) and weight
inheritance (the chosen teacher slices, copied exactly)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import log_softmax, softmax
from scipy.stats import entropy

from kd_engine.losses.image_text import affinity_excess, affinity_soft_ce, clip_infonce, embedding_mse
from kd_engine.models.two_tower import TwoTower
from kd_engine.parts.inheritance import depth_map, inherit


def _unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=1)


def test_affinity_soft_ce_for_identical_towers_is_the_teachers_row_entropy_and_its_minimum():
    img, txt, scale = _unit(6, 5, 0), _unit(6, 5, 1), 7.0
    a = scale * img.numpy() @ txt.numpy().T
    floor = 0.5 * (entropy(softmax(a, axis=1), axis=1) + entropy(softmax(a.T, axis=1), axis=1))  # SciPy, per pair
    same = affinity_soft_ce(img, txt, img, txt, scale, reduction="none")
    np.testing.assert_allclose(same.numpy(), floor, rtol=1e-10)
    assert floor.min() > 0.1  # the floor is not zero: the loss is a cross-entropy
    np.testing.assert_allclose(affinity_excess(img, txt, img, txt, scale, reduction="none").numpy(), 0, atol=1e-12)
    for seed in range(5):  # any other student costs more, pair by pair
        other_img = F.normalize(img + 0.3 * _unit(6, 5, 10 + seed), dim=1)
        worse = affinity_soft_ce(other_img, txt, img, txt, scale, reduction="none").numpy()
        assert (worse >= floor - 1e-12).all() and worse.sum() > floor.sum() + 1e-3


def test_affinity_soft_ce_hand_case_and_reductions():
    s_img, s_txt, t_img, t_txt = _unit(3, 4, 2), _unit(3, 4, 3), _unit(3, 2, 4), _unit(3, 2, 5)  # widths differ
    scale, t_scale = 2.0, 3.0
    sa, ta = scale * s_img.numpy() @ s_txt.numpy().T, t_scale * t_img.numpy() @ t_txt.numpy().T
    want = 0.5 * (-(softmax(ta, 1) * log_softmax(sa, 1)).sum(1) - (softmax(ta.T, 1) * log_softmax(sa.T, 1)).sum(1))
    got = affinity_soft_ce(s_img, s_txt, t_img, t_txt, scale, teacher_scale=t_scale, reduction="none")
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)
    assert float(affinity_soft_ce(s_img, s_txt, t_img, t_txt, scale, t_scale, "sum")) == pytest.approx(want.sum())
    assert float(affinity_soft_ce(s_img, s_txt, t_img, t_txt, scale, t_scale)) == pytest.approx(want.mean())
    with pytest.raises(ValueError, match="one B"):
        affinity_soft_ce(s_img, s_txt[:2], t_img, t_txt)


def test_infonce_and_embedding_mse_known_answers():
    img, txt = _unit(4, 3, 6), _unit(4, 3, 7)
    a = 5.0 * img.numpy() @ txt.numpy().T
    want = 0.5 * (-np.diag(log_softmax(a, 1)) - np.diag(log_softmax(a.T, 1)))
    np.testing.assert_allclose(clip_infonce(img, txt, 5.0, reduction="none").numpy(), want, rtol=1e-10)
    np.testing.assert_allclose(embedding_mse(img, txt, "none").numpy(),
                               2 - 2 * (img.numpy() * txt.numpy()).sum(1), rtol=1e-10)


def _models():
    torch.manual_seed(0)
    teacher = TwoTower((1, 16, 16), image_dim=64, image_depth=4, image_heads=4, text_dim=64, text_depth=2, text_heads=4)
    student = TwoTower((1, 16, 16), image_dim=32, image_depth=2, image_heads=2, text_dim=32, text_depth=2, text_heads=2)
    return teacher, student


def test_depth_interval():
    assert depth_map(4, 2) == [0, 2] and depth_map(6, 3) == [0, 2, 4] and depth_map(5, 2) == [0, 2]
    assert depth_map(2, 2) == [0, 1]
    with pytest.raises(ValueError, match="depth"):
        depth_map(2, 3)


def test_inheritance_copies_the_chosen_teacher_slices_exactly():
    teacher, student = _models()
    sources = inherit(student, teacher, {"image.": 2, "text.": 2}, {"image.": 4, "text.": 4})
    t, s = teacher.state_dict(), student.state_dict()
    assert sources["image.blocks.1.attn.qkv.weight"] == "image.blocks.2.attn.qkv.weight"  # step 4 // 2 = 2
    assert sources["text.blocks.1.mlp.0.weight"] == "text.blocks.1.mlp.0.weight"  # step 2 // 2 = 1
    # fused qkv: rows part*64 + head*16 + j of the teacher for heads 0, 1 (of 4) and all 16 dims, columns 0..31
    rows = [part * 64 + head * 16 + j for part in range(3) for head in range(2) for j in range(16)]
    tq = t["image.blocks.2.attn.qkv.weight"].numpy()
    assert np.array_equal(s["image.blocks.1.attn.qkv.weight"].numpy(), tq[rows][:, :32])
    assert not np.array_equal(s["image.blocks.1.attn.qkv.weight"].numpy(), tq[:96, :32])  # not a plain slice
    assert np.array_equal(s["image.blocks.1.attn.qkv.bias"].numpy(), t["image.blocks.2.attn.qkv.bias"].numpy()[rows])
    proj_cols = [head * 16 + j for head in range(2) for j in range(16)]
    assert np.array_equal(s["image.blocks.1.attn.proj.weight"].numpy(),
                          t["image.blocks.2.attn.proj.weight"].numpy()[:32][:, proj_cols])
    for name, (rows_, cols_) in {"image.blocks.1.mlp.0.weight": (64, 32), "text.token_embed.weight": (19, 32),
                                 "image.head.weight": (32, 32)}.items():
        assert np.array_equal(s[name].numpy(), t[sources[name]].numpy()[:rows_, :cols_]), name
    assert np.array_equal(s["image.pos_embed"].numpy(), t["image.pos_embed"].numpy()[:, :, :32])
    assert np.array_equal(s["image.blocks.0.norm1.weight"].numpy(), t["image.blocks.0.norm1.weight"].numpy()[:32])
    assert np.array_equal(s["image.patch_embed.weight"].numpy(), t["image.patch_embed.weight"].numpy()[:32])


def test_inheritance_at_full_width_keeps_the_teachers_blocks_working():
    """Depth-only inheritance: student block i computes exactly what teacher block 2i computes."""
    teacher, _ = _models()
    student = TwoTower((1, 16, 16), image_dim=64, image_depth=2, image_heads=4, text_dim=64, text_depth=1, text_heads=4)
    inherit(student, teacher, {"image.": 4, "text.": 4}, {"image.": 4, "text.": 4})
    h = torch.randn(3, 17, 64)
    with torch.no_grad():
        assert torch.equal(student.image.blocks[1](h), teacher.image.blocks[2](h))
        assert torch.equal(student.text.blocks[0](h[:, :4]), teacher.text.blocks[0](h[:, :4]))


def test_inheritance_refuses_more_heads_than_the_teacher_has():
    teacher, _ = _models()
    student = TwoTower((1, 16, 16), image_dim=32, image_depth=2, image_heads=8, text_dim=32, text_depth=2, text_heads=2)
    with pytest.raises(ValueError, match="heads"):
        inherit(student, teacher, {"image.": 8, "text.": 2}, {"image.": 4, "text.": 4})
