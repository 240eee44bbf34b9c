"""The detection teacher-pass cache (offline KD) and the AID record's previously missing items."""
import copy

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from kd_engine.config import validate
from kd_engine.data.detection.scenes import generate_scenes
from kd_engine.errors import ConfigError
from kd_engine.losses.detection_teacher import teacher_losses
from kd_engine.methods.zhang_ma import ZhangMa
from kd_engine.models.detection import build_detector

SIZE = 64


def _raw(**params):
    return {"name": "t", "data": {"name": "scenes", "params": {"n_train": 4, "image_size": SIZE}},
            "student": {"name": "retinanet"}, "teacher": {"name": "retinanet"},
            "method": "zhang_ma", "distill": {"params": {"preset": "single_stage_baseline", **params}},
            "weighting": {"strategy": "aid", "params": {"alpha": 1.0}}}


@pytest.fixture(scope="module")
def batch():
    scenes = generate_scenes(5, seed=3, image_size=SIZE, objects=(1, 3))
    images = [torch.from_numpy(im) for im in scenes.images]
    targets = []
    for m in scenes.coco["images"]:
        anns = [a for a in scenes.coco["annotations"] if a["image_id"] == m["id"]]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
                        "image_id": m["id"]})
    return images, targets


def _pair(**params):
    torch.manual_seed(0)
    teacher = build_detector("retinanet", SIZE, 4, width=8, depth=1, fpn_channels=16).eval()
    student = build_detector("retinanet", SIZE, 4, width=4, depth=1, fpn_channels=16)
    for p in teacher.parameters():
        p.requires_grad_(False)
    out = []
    for cache in (False, True):
        cfg = validate(_raw(teacher_pass_cache=cache, **params), "test")
        torch.manual_seed(1)
        out.append(ZhangMa(cfg, copy.deepcopy(student), copy.deepcopy(teacher), (3, SIZE, SIZE)))
    return out


def _step(distiller, images, targets):
    distiller.zero_grad()
    out = distiller(images, targets)
    out.total.backward()
    grads = {n: p.grad.clone() for n, p in distiller.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.losses.items()}, grads, out.rows()


def test_cached_step_equals_live_step(batch):
    images, targets = batch
    live, cached = _pair()
    calls = []
    cached.teacher.backbone.register_forward_hook(lambda *a: calls.append(1))
    for order in ([0, 1, 2], [2, 3, 0], [1, 2, 0]):  # fill, partly cached, fully cached
        ims, tgs = [images[i] for i in order], [targets[i] for i in order]
        n_before = len(calls)
        (l_live, g_live, r_live), (l_cached, g_cached, r_cached) = (
            _step(d, ims, tgs) for d in (live, cached))
        for k in l_live:
            torch.testing.assert_close(l_cached[k], l_live[k], rtol=1e-4, atol=1e-6)
        assert g_live.keys() == g_cached.keys() and g_live
        for k in g_live:
            torch.testing.assert_close(g_cached[k], g_live[k], rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(r_cached["weight"], r_live["weight"], rtol=1e-5)
        if order == [1, 2, 0]:
            assert len(calls) == n_before  # the teacher's forward was skipped
    assert (cached.teacher_cache.misses, cached.teacher_cache.hits) == (4, 5)


def test_top_background_score_is_the_max_over_unmatched_anchors(batch):
    images, targets = batch
    torch.manual_seed(0)
    model = build_detector("retinanet", SIZE, 4, width=8, depth=1, fpn_channels=16).eval()
    tl = teacher_losses(model, images[:2], targets[:2])
    score = tl.parts["top_background_score"]
    with torch.no_grad():  # independently: every anchor's IoU with every GT, by hand
        images_t, targets_t = model.transform(images[:2], [dict(t) for t in targets[:2]])
        feats = list(model.backbone(images_t.tensors).values())
        logits = model.head(feats)["cls_logits"]
        anchors = model.anchor_generator(images_t, feats)
    for b in range(2):
        iou = box_iou(targets_t[b]["boxes"], anchors[b])  # (G, N)
        if iou.shape[0]:  # background: IoU < 0.4 with every GT and no GT's best anchor
            best = (iou == iou.amax(1, keepdim=True)).any(0)
            bg = (iou.amax(0) < model.proposal_matcher.low_threshold) & ~best
        else:
            bg = torch.ones(iou.shape[1], dtype=torch.bool)
        expected = torch.sigmoid(logits[b][bg]).max()
        assert float(score[b]) == pytest.approx(float(expected), rel=1e-6)


def test_student_features_source_grades_the_student_maps(batch):
    images, targets = batch
    live, _ = _pair(teacher_loss_source="student_features")
    out = live(images[:2], targets[:2])
    rows = out.rows()
    own = teacher_losses(live.teacher, images[:2], targets[:2])
    on_student = teacher_losses(live.teacher, images[:2], targets[:2],
                                features=out.rows and live.student.backbone(
                                    live.student.transform(images[:2])[0].tensors))
    # an untrained head's logits hardly depend on its input, so compare exactly, not loosely
    np.testing.assert_allclose(rows["teacher_loss"],
                               (on_student.cls_level + on_student.box_level).reshape(-1).numpy(), rtol=1e-5)
    assert not np.array_equal(rows["teacher_loss"], (own.cls_level + own.box_level).reshape(-1).numpy())
    with pytest.raises(ConfigError, match="teacher_loss_source"):
        validate_and_build = _raw(teacher_loss_source="student")
        ZhangMa(validate(validate_and_build, "t"), live.student, live.teacher, (3, SIZE, SIZE))
