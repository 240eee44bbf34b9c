"""Per-instance teacher detection losses decompose torchvision's own reported losses.

torchvision reports losses only in train mode; the teacher runs in train mode with BatchNorm
frozen (eval) so that its features equal the eval-mode features the AID teacher uses.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from kd_engine.losses.detection_teacher import (TeacherLosses, fasterrcnn_teacher_losses,
                                                teacher_losses)
from kd_engine.models.detection import (DETECTOR_KINDS, build_detector, detector_levels,
                                        freeze_batchnorm)

S = 64
TOL = dict(rtol=1e-5, atol=1e-5)
APPROX = dict(rel=1e-5, abs=1e-5)


def make_batch(n_per_image=(2, 4, 0), seed=0):
    """64x64 random images with a few random boxes (the last image has none)."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for n in n_per_image:
        images.append(torch.rand(3, S, S, generator=g))
        xy = torch.rand(n, 2, generator=g) * (S - 24)
        wh = 5 + torch.rand(n, 2, generator=g) * 20
        boxes = torch.cat([xy, (xy + wh).clamp(max=S)], 1)
        targets.append({"boxes": boxes, "labels": torch.randint(1, 4, (n,), generator=g)})
    return images, targets


def make_model(kind, seed=0, **kw):
    torch.manual_seed(seed)
    model = build_detector(kind, S, 4, width=8, depth=1, fpn_channels=32, **kw)
    # Spread the head outputs so box and class losses are not all at their init values.
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d) and name.endswith(("cls_logits", "bbox_reg", "bbox_pred",
                                                              "bbox_ctrness")):
            torch.nn.init.normal_(m.weight, std=0.05)
    return model


def torchvision_losses(model, images, targets):
    model.train()
    freeze_batchnorm(model)
    with torch.no_grad():
        return {k: float(v) for k, v in model(images, targets).items()}


def test_builders_sizes_and_levels():
    images, _ = make_batch()
    for kind in DETECTOR_KINDS:
        model = make_model(kind).eval()
        assert model.transform.min_size == (S,) and model.transform.max_size == S
        with torch.no_grad():
            feats = model.backbone(model.transform(images)[0].tensors)
        assert list(feats) == detector_levels(kind) == model.kd_levels
        assert all(f.shape[1] == 32 for f in feats.values())
    t = build_detector("retinanet", 128, 4, width=32, depth=2, fpn_channels=64)
    s = build_detector("retinanet", 128, 4, width=8, depth=1, fpn_channels=64)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert abs(count(t) / 1e6 - 3.35) < 0.01 and abs(count(s) / 1e6 - 0.61) < 0.01  # the AID miniature's model sizes
    with pytest.raises(ValueError, match="kind"):
        build_detector("yolo", S, 4)
    with pytest.raises(ValueError, match="background"):
        build_detector("retinanet", S, 1)


def test_retinanet_per_image_adds_up_to_torchvision():
    images, targets = make_batch()
    model = make_model("retinanet")
    reported = torchvision_losses(model, images, targets)
    res = teacher_losses(model, images, targets)
    assert isinstance(res, TeacherLosses) and res.cls.shape == (3,) and res.box.shape == (3,)
    # torchvision: mean over images of (sum over anchors) / max(1, #fg of the image)
    assert res.cls.mean().item() == pytest.approx(reported["classification"], **APPROX)
    assert res.box.mean().item() == pytest.approx(reported["bbox_regression"], **APPROX)
    # The image without GTs: background classification loss only.
    assert res.box[2] == 0 and res.num_foreground[2] == 0 and res.cls[2] > 0


def test_retinanet_eval_mode_gives_same_losses_and_features():
    images, targets = make_batch()
    model = make_model("retinanet")
    model.train()
    freeze_batchnorm(model)
    a = teacher_losses(model, images, targets)
    model.eval()
    b = teacher_losses(model, images, targets)
    assert not model.training  # the function leaves the mode alone
    torch.testing.assert_close(a.total, b.total)
    with torch.no_grad():
        feats = model.backbone(model.transform(images)[0].tensors)
    for name, f in feats.items():
        torch.testing.assert_close(b.features[name], f)
    assert not b.total.requires_grad and not b.features["p3"].requires_grad
    assert teacher_losses(model, images, targets, grad=True).features["p3"].requires_grad


def test_retinanet_levels_and_gts_decompose():
    images, targets = make_batch()
    res = teacher_losses(make_model("retinanet").eval(), images, targets)
    assert res.levels == ["p3", "p4", "p5", "p6", "p7"] and res.cls_level.shape == (3, 5)
    torch.testing.assert_close(res.cls_level.sum(1), res.cls, **TOL)
    torch.testing.assert_close(res.box_level.sum(1), res.box, **TOL)
    for b, gt in enumerate(res.per_gt):
        assert gt.cls.shape == gt.box.shape == (len(targets[b]["labels"]),)
        assert int(gt.num_anchors.sum()) == int(res.num_foreground[b])
        norm = max(1, int(res.num_foreground[b]))
        torch.testing.assert_close((gt.box * gt.num_anchors).sum() / norm, res.box[b], **TOL)
        torch.testing.assert_close((gt.cls * gt.num_anchors).sum() / norm,
                                   res.parts["cls_foreground"][b], **TOL)
        assert res.parts["cls_foreground"][b] <= res.cls[b] + 1e-6
    assert res.per_gt[2].cls.numel() == 0


def test_retinanet_gt_without_anchors_is_flagged():
    images, targets = make_batch((2,))
    targets[0]["boxes"][1] = targets[0]["boxes"][0]  # a duplicate box: the matcher gives it nothing
    res = teacher_losses(make_model("retinanet").eval(), images, targets)
    gt = res.per_gt[0]
    assert gt.no_anchor.tolist() == [False, True] and res.num_gt_without_anchors == 1
    assert gt.cls[1] == 0 and gt.box[1] == 0


def test_fcos_per_image_adds_up_to_torchvision():
    images, targets = make_batch()
    model = make_model("fcos")
    reported = torchvision_losses(model, images, targets)
    res = teacher_losses(model, images, targets)
    # torchvision divides batch sums by the batch-wide foreground count.
    n = res.num_foreground.clamp_min(1).float()
    total = max(1, int(res.num_foreground.sum()))
    for ours, key in ((res.cls, "classification"), (res.parts["giou"], "bbox_regression"),
                      (res.parts["ctrness"], "bbox_ctrness")):
        assert ((ours * n).sum() / total).item() == pytest.approx(reported[key], **APPROX)
    torch.testing.assert_close(res.cls_level.sum(1), res.cls, **TOL)
    torch.testing.assert_close(res.box_level.sum(1), res.box, **TOL)
    for b, gt in enumerate(res.per_gt):
        norm = max(1, int(res.num_foreground[b]))
        torch.testing.assert_close((gt.box * gt.num_anchors).sum() / norm, res.box[b], **TOL)


def test_fasterrcnn_rpn_matches_torchvision_when_every_anchor_is_sampled():
    images, targets = make_batch()
    # A sampler that takes every positive and negative makes torchvision's RPN loss deterministic.
    model = make_model("fasterrcnn", rpn_batch_size_per_image=10 ** 6, rpn_positive_fraction=1.0)
    reported = torchvision_losses(model, images, targets)
    res = fasterrcnn_teacher_losses(model, images, targets)
    cnt = res.parts["rpn_sampled"].float()
    obj = (res.parts["rpn_cls_level"].sum(1) * cnt).sum() / cnt.sum()
    box = (res.parts["rpn_box_level"].sum(1) * cnt).sum() / cnt.sum()
    assert obj.item() == pytest.approx(reported["loss_objectness"], **APPROX)
    assert box.item() == pytest.approx(reported["loss_rpn_box_reg"], **APPROX)
    # cls/box are RoI + RPN, split over levels, adding up to the image.
    torch.testing.assert_close(res.cls, res.parts["roi_cls"] + res.parts["rpn_cls_level"].sum(1))
    torch.testing.assert_close(res.cls_level.sum(1), res.cls, **TOL)
    torch.testing.assert_close(res.box_level.sum(1), res.box, **TOL)
    assert res.levels == ["p2", "p3", "p4", "p5", "pool"]


def test_fasterrcnn_rpn_is_the_expectation_of_the_sampled_loss():
    images, targets = make_batch((3,), seed=3)
    model = make_model("fasterrcnn", rpn_batch_size_per_image=4).eval()
    res = fasterrcnn_teacher_losses(model, images, targets)
    model.rpn.train()
    torch.manual_seed(0)
    with torch.no_grad():
        images_t, targets_t = model.transform(images, targets)
        feats = model.backbone(images_t.tensors)
        draws = [model.rpn(images_t, feats, targets_t)[1] for _ in range(300)]
    obj = torch.tensor([float(d["loss_objectness"]) for d in draws])
    box = torch.tensor([float(d["loss_rpn_box_reg"]) for d in draws])
    for mc, ours in ((obj, res.parts["rpn_cls_level"].sum()),
                     (box, res.parts["rpn_box_level"].sum())):
        se = mc.std().item() / math.sqrt(len(mc))
        assert abs(mc.mean().item() - ours.item()) < 4 * se + 1e-6


def test_fasterrcnn_per_gt_known_answers():
    images, targets = make_batch((2, 3, 0))
    model = make_model("fasterrcnn").eval()
    pred = model.roi_heads.box_predictor
    with torch.no_grad():
        pred.cls_score.weight.zero_()
        pred.cls_score.bias.copy_(torch.tensor([0.0, 6.0, 0.0, 0.0]))  # always predicts class 1
        pred.bbox_pred.weight.zero_()
        pred.bbox_pred.bias.fill_(0.05)  # every delta 0.05 (< beta = 1/9)
    for t in targets:
        t["labels"] = torch.ones_like(t["labels"])
    res = fasterrcnn_teacher_losses(model, images, targets)
    lse = torch.logsumexp(pred.cls_score.bias, 0)
    box = 4 * 0.5 * 0.05 ** 2 * 9  # smooth-L1, beta = 1/9, toward the zero target
    for gt in res.per_gt[:2]:
        torch.testing.assert_close(gt.cls, (lse - 6.0).expand_as(gt.cls))  # right class: low loss
        torch.testing.assert_close(gt.box, torch.full_like(gt.box, box))
    torch.testing.assert_close(res.parts["roi_cls"][:2], (lse - 6.0).repeat(2))  # mean over GTs
    assert res.parts["roi_cls"][2] == 0 and res.per_gt[2].cls.numel() == 0
    again = fasterrcnn_teacher_losses(model, images, targets)  # no sampler: deterministic
    torch.testing.assert_close(again.total, res.total)
    swapped = [dict(t, labels=torch.full_like(t["labels"], 2)) for t in targets]
    worse = fasterrcnn_teacher_losses(model, images, swapped)
    for a, b in zip(res.per_gt[:2], worse.per_gt[:2]):
        assert (b.cls > a.cls + 5).all()
        torch.testing.assert_close(b.cls, (lse - 0.0).expand_as(b.cls))
    # Against a direct cross-entropy on the predictor output for one GT box.
    rh = model.roi_heads
    with torch.no_grad():
        images_t, targets_t = model.transform(images, targets)
        feats = model.backbone(images_t.tensors)
        logits, _ = rh.box_predictor(rh.box_head(rh.box_roi_pool(feats, [targets_t[0]["boxes"][:1]],
                                                                 images_t.image_sizes[:1])))
    torch.testing.assert_close(res.per_gt[0].cls[:1], F.cross_entropy(logits, torch.tensor([1]),
                                                                      reduction="none"))


def test_dispatch_rejects_other_models():
    with pytest.raises(TypeError, match="no per-instance teacher loss"):
        teacher_losses(torch.nn.Linear(2, 2), [], [])


def test_images_without_any_gt():
    images, targets = make_batch((0, 0))
    for kind in DETECTOR_KINDS:
        res = teacher_losses(make_model(kind).eval(), images, targets)
        assert torch.equal(res.box, torch.zeros(2)) and (res.cls > 0).all()
        assert res.cls_level.shape == (2, 5) and all(g.cls.numel() == 0 for g in res.per_gt)
