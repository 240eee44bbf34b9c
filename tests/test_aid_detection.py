"""AID detection weights: every granularity against hand-computed exp(−α·L), decoupling, per-GT
mask painting, record columns, and one pass over a real RetinaNet teacher's losses."""
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch

from kd_engine.errors import ConfigError
from kd_engine.losses.detection_kd import weighted_kd
from kd_engine.losses.detection_teacher import GTLosses, TeacherLosses, teacher_losses
from kd_engine.models.detection import build_detector
from kd_engine.weighting.aid_detection import (GRANULARITIES, aid_detection_weights,
                                               aid_weight_records, fpn_strides,
                                               paint_per_gt_mask)

T = torch.tensor
CLS_LEVEL = [[0.5, 0.2], [1.0, 0.0]]
BOX_LEVEL = [[0.3, 0.1], [0.5, 0.5]]


def gt(boxes, cls, box, anchors, labels=None):
    n = len(boxes)
    return GTLosses(T(boxes, dtype=torch.float32).reshape(n, 4),
                    T(labels or [1] * n), T(cls), T(box), T(anchors))


def hand_losses(parts=None, nfg=(2, 0)):
    cl, bl = T(CLS_LEVEL), T(BOX_LEVEL)
    per_gt = [gt([[0, 0, 20, 20]], [0.4], [0.2], [3]),
              gt([[0, 0, 8, 8], [10, 10, 30, 30], [40, 40, 60, 60]], [0.6, 0.0, 1.0],
                 [0.1, 0.0, 0.5], [2, 0, 1])]
    return TeacherLosses(cl.sum(1), bl.sum(1), cl, bl, T(list(nfg)), per_gt, OrderedDict(),
                         ["p3", "p4"], parts or {})


def close(a, b):
    torch.testing.assert_close(a.float(), T(b, dtype=torch.float32), rtol=1e-6, atol=1e-6)


def test_per_image_level_is_exp_of_level_losses():
    w = aid_detection_weights(hand_losses(), alpha=1.0)
    close(w.feature, [[math.exp(-0.8), math.exp(-0.3)], [math.exp(-1.5), math.exp(-0.5)]])
    assert w.cls is w.feature and w.box is w.feature and not w.feature.requires_grad
    assert w.as_image_level(2, 2).shape == (2, 2)


def test_per_image_one_weight_for_all_levels():
    w = aid_detection_weights(hand_losses(), alpha=0.5, granularity="per_image")
    close(w.feature, [math.exp(-0.5 * 1.1), math.exp(-0.5 * 2.0)])
    close(w.as_image_level(2, 2), [[math.exp(-0.55)] * 2, [math.exp(-1.0)] * 2])


def test_per_level_batch_single_stage_uses_batch_positives():
    # Σ_b L_bl·max(1, n_b) / max(1, Σ n_b) with n = (2, 0):
    # level 0: cls (0.5·2 + 1.0)/2 = 1.0, box (0.3·2 + 0.5)/2 = 0.55;
    # level 1: cls (0.2·2 + 0.0)/2 = 0.2, box (0.1·2 + 0.5)/2 = 0.35.
    w = aid_detection_weights(hand_losses(), alpha=1.0, granularity="per_level_batch")
    close(w.feature, [math.exp(-1.55), math.exp(-0.55)])
    close(w.as_image_level(2, 2), [[math.exp(-1.55), math.exp(-0.55)]] * 2)


def test_per_level_batch_two_stage_from_parts():
    parts = {"roi_cls": T([0.4, 0.8]), "roi_box": T([0.2, 0.0]),
             "rpn_cls_level": T([[0.1, 0.3], [0.2, 0.1]]),
             "rpn_box_level": T([[0.05, 0.0], [0.1, 0.2]]), "rpn_sampled": T([100, 300])}
    tl = hand_losses(parts)
    tl.cls_level, tl.box_level = torch.full((2, 2), 99.0), torch.full((2, 2), 99.0)
    # RoI over all 1 + 3 GTs: cls (0.4 + 3·0.8)/4 = 0.7, box 0.2/4 = 0.05 (one scalar).
    # RPN over 400 sampled anchors: cls (10 + 60)/400, (30 + 30)/400; box (5 + 30)/400, 60/400.
    w = aid_detection_weights(tl, alpha=0.1, granularity="per_level_batch", decoupled=True)
    close(w.feature, [math.exp(-0.1 * (0.75 + 0.175 + 0.0875)), math.exp(-0.1 * (0.75 + 0.3))])
    close(w.cls, [math.exp(-0.1 * 0.875), math.exp(-0.1 * 0.85)])
    close(w.box, [math.exp(-0.1 * 0.1375), math.exp(-0.1 * 0.2)])


def test_per_gt_weights_and_no_anchor_gets_one():
    w = aid_detection_weights(hand_losses(), alpha=1.0, granularity="per_gt")
    close(w.feature, [math.exp(-1.1), math.exp(-2.0)])  # global terms: per-image w
    close(w.per_gt[0], [math.exp(-0.6)])
    close(w.per_gt[1], [math.exp(-0.7), 1.0, math.exp(-1.5)])
    assert w.num_gt_without_anchors == 1


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_decoupled_uses_cls_and_box_separately(granularity):
    tl = hand_losses()
    a = 1.0
    w = aid_detection_weights(tl, alpha=a, granularity=granularity, decoupled=True)
    plain = aid_detection_weights(tl, alpha=a, granularity=granularity)
    close(w.feature, plain.feature.tolist())
    if granularity == "per_image_level":
        close(w.cls, torch.exp(-a * T(CLS_LEVEL)).tolist())
        close(w.box, torch.exp(-a * T(BOX_LEVEL)).tolist())
    elif granularity in ("per_image", "per_gt"):
        close(w.cls, torch.exp(-a * tl.cls).tolist())
        close(w.box, torch.exp(-a * tl.box).tolist())
    torch.testing.assert_close(w.cls * w.box, w.feature)  # exp(−a·c)·exp(−a·b) = exp(−a(c+b))


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_alpha_zero_gives_ones(granularity):
    w = aid_detection_weights(hand_losses(), alpha=0.0, granularity=granularity, decoupled=True)
    for t in (w.feature, w.cls, w.box, *(w.per_gt or [])):
        assert torch.all(t == 1)


def test_bad_granularity_and_alpha():
    with pytest.raises(ConfigError, match="weighting.params.granularity") as err:
        aid_detection_weights(hand_losses(), granularity="per_box")
    assert all(g in str(err.value) for g in GRANULARITIES) and "per_box" in str(err.value)
    with pytest.raises(ConfigError, match="decoupled: true"):
        aid_detection_weights(hand_losses(), granularity="decoupled")
    with pytest.raises(ConfigError, match="weighting.params.alpha"):
        aid_detection_weights(hand_losses(), alpha=-1)


def test_paint_overlap_min_background_and_edge_boxes():
    per_gt = [gt([[0, 0, 20, 20], [10, 10, 30, 30]], [0, 0], [0, 0], [1, 1]),
              gt([[62, 62, 63, 63], [64, 30, 64, 31]], [0, 0], [0, 0], [1, 1])]
    weights = [T([0.5, 0.8]), T([0.6, 0.95])]
    shapes, strides = {"p3": (8, 8), "p4": (4, 4)}, {"p3": 8, "p4": 16}
    m = paint_per_gt_mask(per_gt, shapes, strides, gt_weights=weights)
    p3 = m["p3"]
    assert p3.shape == (2, 8, 8) and m["p4"].shape == (2, 4, 4)
    assert (p3[0, 0, 0:3] == 0.5).all() and p3[0, 2, 2] == 0.5  # A, and the overlap = min
    assert p3[0, 3, 3] == 0.8 and p3[0, 1, 3] == 0.8  # B only
    assert p3[0, 5, 5] == 1 and p3[0, 0, 4] == 1  # background
    assert p3[1, 7, 7] == 0.6 and (p3[1] == 0.6).sum() == 1  # tiny box: exactly one cell
    assert p3[1, 3, 7] == 0.95 and (p3[1] == 0.95).sum() == 1  # zero-width box on the border
    assert m["p4"][1, 3, 3] == 0.6
    # Background = the image's w; a GT above it keeps its own (min is between boxes only).
    mi = paint_per_gt_mask(per_gt, shapes, strides, image_weights=T([0.9, 0.7]),
                           background="image", gt_weights=weights)["p3"]
    assert mi[0, 5, 5] == pytest.approx(0.9) and mi[1, 0, 0] == pytest.approx(0.7)
    assert mi[1, 3, 7] == pytest.approx(0.95) and mi[0, 1, 1] == 0.5


def test_paint_no_anchor_gt_gets_one():
    per_gt = [gt([[0, 0, 16, 16], [32, 32, 48, 48]], [0.3, 0.9], [0.2, 0.9], [4, 0])]
    m = paint_per_gt_mask(per_gt, {"p3": (8, 8)}, {"p3": 8}, alpha=1.0)["p3"]
    assert m[0, 0, 0] == pytest.approx(math.exp(-0.5))
    assert m[0, 4, 4] == 1 and m[0, 5, 5] == 1 and m.min() == pytest.approx(math.exp(-0.5))


def test_records_columns():
    tl = hand_losses()
    w = aid_detection_weights(tl, alpha=1.0)
    r = aid_weight_records(w, tl, image_ids=[10, 11])
    assert r["image_id"].tolist() == [10, 10, 11, 11] and r["level"].tolist() == [0, 1, 0, 1]
    np.testing.assert_allclose(r["weight"], np.exp(-(r["teacher_cls"] + r["teacher_box"])),
                               rtol=1e-6)
    wg = aid_detection_weights(tl, alpha=1.0, granularity="per_gt", decoupled=True)
    rg = aid_weight_records(wg, tl)
    assert len(rg["image_id"]) == 2 + 4 and rg["gt"].tolist() == [-1, -1, 0, 0, 1, 2]
    assert np.isnan(rg["x0"][:2]).all() and rg["x1"][3:].tolist() == [8, 30, 60]
    assert rg["weight"][4] == 1 and rg["num_anchors"][4] == 0
    assert {"weight_cls", "weight_box", "y0", "y1", "label"} <= set(rg)


def test_real_retinanet_teacher_losses():
    torch.manual_seed(0)
    model = build_detector("retinanet", 64, 4, width=8, depth=1, fpn_channels=16).eval()
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [{"boxes": T([[4.0, 6.0, 30.0, 28.0], [35.0, 40.0, 60.0, 63.0]]),
                "labels": T([1, 2])},
               {"boxes": T([[10.0, 10.0, 50.0, 40.0]]), "labels": T([3])}]
    tl = teacher_losses(model, images, targets)
    B, L = 2, len(tl.levels)
    w = aid_detection_weights(tl, alpha=0.1)
    assert w.feature.shape == (B, L) and bool(((w.feature > 0) & (w.feature <= 1)).all())
    for g in GRANULARITIES:
        assert aid_detection_weights(tl, 1.0, g, True).as_image_level(B, L).shape == (B, L)
    strides = fpn_strides(tl.levels)
    shapes = {lv: tuple(f.shape[-2:]) for lv, f in tl.features.items()}
    assert all(shapes[lv][0] * strides[lv] == 64 for lv in ("p3", "p4", "p5"))
    wg = aid_detection_weights(tl, alpha=1.0, granularity="per_gt")
    masks = paint_per_gt_mask(tl.per_gt, shapes, strides, wg.feature, "image",
                              gt_weights=wg.per_gt)
    assert all(masks[lv].shape == (B, *shapes[lv]) for lv in tl.levels)
    terms = {"am": {lv: torch.ones(B) for lv in tl.levels}}
    kd = weighted_kd(terms, {"am": 1.0}, w.as_image_level(B, L), tl.levels)
    torch.testing.assert_close(kd, w.feature.sum(1))
