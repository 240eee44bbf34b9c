"""DistillBEV's masks and losses against values computed independently: footprints by hand and by
matplotlib's point-in-polygon test, the scale mask by hand, connected components by hand, the
teacher attention and the region/global losses in numpy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from matplotlib.path import Path

from kd_engine.losses.bev_distill import global_channel, global_spatial, region_imitation, teacher_attention
from kd_engine.parts.bev_masks import (box_cells, component_weights, false_positive_regions, footprint_mask,
                                       metric_to_cells, scale_mask, scene_masks)


# -- masks ------------------------------------------------------------------------------------------
def test_axis_aligned_footprint_by_hand():
    # centre (4, 4), length 4 along x, width 2 along y: columns 2..5 (centres 2.5..5.5 in [2, 6]),
    # rows 3..4 (centres 3.5, 4.5 in [3, 5])
    mask = footprint_mask([[4.0, 4.0, 4.0, 2.0, 0.0]], 8, 8).numpy()
    expected = np.zeros((8, 8), bool)
    expected[3:5, 2:6] = True
    assert (mask == expected).all()
    # a quarter turn swaps the axes
    turned = footprint_mask([[4.0, 4.0, 4.0, 2.0, math.pi / 2]], 8, 8).numpy()
    assert (turned == expected.T).all()


def test_rotated_footprint_matches_point_in_polygon():
    box = [10.3, 7.1, 6.0, 2.5, math.pi / 4]
    cx, cy, length, width, yaw = box
    c, s = math.cos(yaw), math.sin(yaw)
    corners = [(cx + u * c - v * s, cy + u * s + v * c)
               for u, v in ((-length / 2, -width / 2), (length / 2, -width / 2), (length / 2, width / 2),
                            (-length / 2, width / 2))]
    ys, xs = np.mgrid[0:16, 0:20] + 0.5
    inside = Path(corners).contains_points(np.stack([xs.ravel(), ys.ravel()], 1)).reshape(16, 20)
    mask = box_cells([box], 16, 20)[0].numpy()
    assert mask.sum() > 10 and (mask == inside).all()


def test_scale_mask_by_hand_and_overlap_takes_max():
    fg, scale = scale_mask([[4.0, 4.0, 4.0, 2.0, 0.0]], 8, 8)
    assert int(fg.sum()) == 8
    assert torch.allclose(scale[fg], torch.full((8,), math.sqrt(1 / 8)))
    assert torch.allclose(scale[~fg], torch.full((56,), 1 / 56))
    # a 2x2 box inside the 4x2 one: its 4 cells take sqrt(1/4) = 0.5, the rest keep sqrt(1/8)
    fg2, scale2 = scale_mask([[4.0, 4.0, 4.0, 2.0, 0.0], [4.0, 4.0, 2.0, 2.0, 0.0]], 8, 8)
    assert int(fg2.sum()) == 8
    assert sorted(scale2[fg2].tolist()) == pytest.approx([math.sqrt(1 / 8)] * 4 + [0.5] * 4)
    # cell area 0.25 (0.5 m cells, boxes in cells) scales the foreground weight by sqrt(0.25)
    _, quarter = scale_mask([[4.0, 4.0, 4.0, 2.0, 0.0]], 8, 8, cell_area=0.25)
    assert torch.allclose(quarter[fg], torch.full((8,), 0.5 * math.sqrt(1 / 8)))


def test_scale_mask_without_boxes_is_uniform_background():
    fg, scale = scale_mask(torch.zeros(0, 5), 4, 4)
    assert not fg.any() and torch.allclose(scale, torch.full((4, 4), 1 / 16))
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        scale_mask([[1.0, 2.0, 3.0]], 4, 4)


def test_component_weights_by_hand():
    region = np.array([[1, 1, 0, 0],
                       [0, 1, 0, 1],
                       [0, 0, 0, 0],
                       [1, 0, 0, 0]], bool)  # components of sizes 3, 1, 1 (diagonals do not join)
    w = component_weights(region)
    assert w[0, 0] == w[0, 1] == w[1, 1] == pytest.approx(1 / 3)
    assert w[1, 3] == w[3, 0] == pytest.approx(1.0)
    assert w[~region].sum() == 0 and w.sum() == pytest.approx(3.0)
    assert component_weights(np.zeros((3, 3), bool)).sum() == 0


def test_false_positive_regions_need_low_truth_high_score_and_background():
    gt = torch.zeros(1, 2, 4, 4)
    gt[0, 1, 0, 0] = 0.9  # a true centre: never a false positive
    pred = torch.zeros(1, 2, 4, 4)
    pred[0, 0, 0, 0] = pred[0, 0, 0, 1] = 0.8  # (0,0) has truth, (0,1) does not
    pred[0, 1, 3, 2] = pred[0, 1, 3, 3] = 0.5  # a 2-cell component ...
    fg = torch.zeros(1, 4, 4, dtype=torch.bool)
    fg[0, 3, 3] = True  # ... one of whose cells is inside a box
    w = false_positive_regions(gt, [pred], fg, gt_below=0.1, score_above=0.3)[0]
    expected = torch.zeros(4, 4)
    expected[0, 1] = 1.0
    expected[3, 2] = 1.0
    assert torch.equal(w, expected)


# -- attention and losses -----------------------------------------------------------------------
def _softmax(a, axis):
    e = np.exp(a - a.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def test_teacher_attention_matches_numpy_and_is_detached():
    t = torch.randn(2, 3, 4, 5, requires_grad=True)
    a_s, a_c = teacher_attention(t, tau=0.5)
    tn = t.detach().numpy()
    ref_s = 20 * _softmax(np.abs(tn).mean(1).reshape(2, -1) / 0.5, 1).reshape(2, 4, 5)
    ref_c = 3 * _softmax(np.abs(tn).mean((2, 3)) / 0.5, 1)
    assert np.allclose(a_s.numpy(), ref_s, atol=1e-5) and np.allclose(a_c.numpy(), ref_c, atol=1e-5)
    assert not a_s.requires_grad and not a_c.requires_grad
    flat_s, flat_c = teacher_attention(torch.ones(1, 3, 4, 5))
    assert torch.allclose(flat_s, torch.ones(1, 4, 5)) and torch.allclose(flat_c, torch.ones(1, 3))


def test_region_imitation_by_numpy_and_golden_cases():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    m, sp, ch = torch.rand(2, 4, 4, generator=g), torch.rand(2, 4, 4, generator=g), torch.rand(2, 3, generator=g)
    per = region_imitation(s, t, m, sp, ch, reduction="none")
    ref = np.einsum("bhw,bhw,bc,bchw->b", m.numpy(), sp.numpy(), ch.numpy(), (s - t).numpy() ** 2)
    assert per.shape == (2,) and np.allclose(per.numpy(), ref, rtol=1e-5)
    assert region_imitation(s, t, m, sp, ch).item() == pytest.approx(ref.mean(), rel=1e-5)
    assert region_imitation(s, t, m, sp, ch, reduction="sum").item() == pytest.approx(ref.sum(), rel=1e-5)
    assert torch.equal(region_imitation(s, s.clone(), m, sp, ch, reduction="none"), torch.zeros(2))
    zero = region_imitation(s, t, torch.zeros(2, 4, 4), reduction="none")
    assert torch.equal(zero, torch.zeros(2)) and not torch.isnan(zero).any()
    # without attention: a plain masked sum of squares
    plain = region_imitation(s, t, torch.ones(2, 4, 4), reduction="none")
    assert torch.allclose(plain, (s - t).pow(2).flatten(1).sum(1))
    with pytest.raises(ValueError, match="mask must have shape"):
        region_imitation(s, t, torch.ones(2, 3, 3))


def test_region_gradient_reaches_student_only():
    s, t = torch.randn(1, 2, 3, 3, requires_grad=True), torch.randn(1, 2, 3, 3, requires_grad=True)
    region_imitation(s, t, torch.ones(1, 3, 3)).backward()
    assert s.grad is not None and t.grad is None


def test_global_terms_by_numpy():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    ch = global_channel(s, t, reduction="none")
    assert np.allclose(ch.numpy(), np.abs(t.numpy().mean((2, 3)) - s.numpy().mean((2, 3))).sum(1), rtol=1e-5)
    smap = torch.randn(3, 1, 5, 5, generator=g)
    sp = global_spatial(smap, t, reduction="none")
    assert np.allclose(sp.numpy(), np.abs(t.numpy().mean(1) - smap.numpy()[:, 0]).reshape(3, -1).sum(1), rtol=1e-5)
    assert torch.equal(global_channel(t, t.clone(), reduction="none"), torch.zeros(3))
    assert global_spatial(t.mean(1), t).item() == 0.0
    with pytest.raises(ValueError):
        global_spatial(torch.zeros(3, 4, 4), t)


def test_scene_masks_from_metric_boxes():
    # a 2 m x 1 m box at (1.0, -1.0) m, yaw 0, on an 8 x 8 map of 1 m cells centred at the origin
    # is the cell-unit box (5, 3, 2, 1, 0)
    boxes = [np.array([[0, 1.0, -1.0, 2.0, 1.0, 0.0]]), np.zeros((0, 6))]
    fg, scale = scene_masks([metric_to_cells(b, 1.0, 8) for b in boxes], 8, 8)
    expected = footprint_mask([[5.0, 3.0, 2.0, 1.0, 0.0]], 8, 8)
    assert fg.shape == (2, 8, 8) and torch.equal(fg[0], expected) and not fg[1].any()
    assert torch.allclose(scale[0][fg[0]], torch.full((int(fg[0].sum()),), math.sqrt(1 / 2)))
    assert torch.allclose(scale[1], torch.full((8, 8), 1 / 64))


def test_a_box_smaller_than_a_cell_keeps_the_cell_of_its_centre():
    # 0.6 x 0.6 cells at 45 degrees around (2.9, 1.2): no cell centre inside, the cell (row 1, col 2) holds it
    mask = footprint_mask([[2.9, 1.2, 0.6, 0.6, math.pi / 4]], 4, 4)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[1, 2] = True
    assert torch.equal(mask, expected)
