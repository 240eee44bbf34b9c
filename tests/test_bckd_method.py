"""The bckd method on tiny FCOS detectors: its terms equal the losses recomputed with numpy from
the two heads' outputs, vanish for a teacher identical to the student, the cached teacher pass
gives the live pass's losses, the recorded per-class weights are the level means, and a wrong
detector or parameter is one ConfigError line."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kd_engine.errors import ConfigError
from kd_engine.losses.detection_teacher import teacher_losses
from kd_engine.methods.bckd import BCKD
from kd_engine.models.detection import build_detector

torch.set_num_threads(1)  # tiny models: one thread, as the engine runs them


def _cfg(**params):
    return SimpleNamespace(distill=SimpleNamespace(params=params, terms=[], task_weight=1.0))


def _detector(seed: int, kind: str = "fcos"):
    torch.manual_seed(seed)
    return build_detector(kind, 32, 4, width=4, depth=1, fpn_channels=32).eval()


def _batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 32, 32, generator=g) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[4.0, 5, 15, 20]]), "labels": torch.tensor([1]), "image_id": 3},
               {"boxes": torch.tensor([[10.0, 2, 25, 12], [1, 20, 7, 30]]), "labels": torch.tensor([2, 3]),
                "image_id": 7}]
    return images, targets


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_terms_match_numpy_from_head_outputs():
    student, teacher = _detector(0), _detector(1)
    method = BCKD(_cfg(), student, teacher, (3, 32, 32))
    images, targets = _batch()
    out = method(images, targets)
    s = teacher_losses(student, images, targets)
    t = teacher_losses(teacher, images, targets)
    zs, zt = s.parts["cls_logits"].double().numpy(), t.parts["cls_logits"].double().numpy()
    q, p = _sigmoid(zs), _sigmoid(zt)
    npos = max(float(s.num_foreground.sum()), 1.0)
    bce = -(p * np.log(q) + (1 - p) * np.log(1 - q))
    want_cls = (bce * np.abs(p - q)).sum() / npos
    assert out.losses["kd_cls"].item() == pytest.approx(want_cls, rel=1e-4)
    # GIoU by hand on the decoded boxes, weight max_c |p_T - p_S|
    bs, bt = s.parts["boxes"].double().numpy(), t.parts["boxes"].double().numpy()
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    inter = (np.clip(np.minimum(bs[..., 2], bt[..., 2]) - np.maximum(bs[..., 0], bt[..., 0]), 0, None)
             * np.clip(np.minimum(bs[..., 3], bt[..., 3]) - np.maximum(bs[..., 1], bt[..., 1]), 0, None))
    union = area(bs) + area(bt) - inter
    hull = ((np.maximum(bs[..., 2], bt[..., 2]) - np.minimum(bs[..., 0], bt[..., 0]))
            * (np.maximum(bs[..., 3], bt[..., 3]) - np.minimum(bs[..., 1], bt[..., 1])))
    giou = inter / (union + 1e-7) - (hull - union) / (hull + 1e-7)
    want_box = 4.0 * (np.abs(p - q).max(-1) * (1 - giou)).sum() / npos
    assert out.losses["kd_box"].item() == pytest.approx(want_box, rel=1e-3)
    rows = out.rows()
    assert len(rows["instance_id"]) == 2 * 5 and set(rows["instance_id"]) == {3, 7}
    sizes = [f.shape[-2] * f.shape[-1] for f in s.features.values()]
    first_level = np.abs(p - q)[0, : sizes[0], 2].mean()  # image 0, level 0, class 2
    assert rows["disc_c2"][0] == pytest.approx(first_level, rel=1e-5)
    assert {"disc_c1", "disc_c3", "box_weight", "kd_cls", "kd_box"} <= set(rows)


def test_identical_teacher_gives_zero_kd_in_every_arm():
    student = _detector(0)
    images, targets = _batch()
    for params in ({}, {"cls_kd": "softmax", "box_kd": "none"}):
        out = BCKD(_cfg(**params), student, copy.deepcopy(student), (3, 32, 32))(images, targets)
        assert out.losses["kd_cls"].item() == pytest.approx(0.0, abs=1e-6)
    assert out.losses.keys() == {"task", "kd_cls"}


def test_cached_teacher_pass_gives_the_live_losses():
    student, teacher = _detector(0), _detector(1)
    images, targets = _batch()
    live = BCKD(_cfg(teacher_pass_cache=False), student, teacher, (3, 32, 32))(images, targets)
    cached = BCKD(_cfg(), student, teacher, (3, 32, 32))
    cached(images, targets)
    again = cached(images, targets)
    assert cached.teacher_cache.hits == 2
    for key in ("kd_cls", "kd_box"):
        assert again.losses[key].item() == pytest.approx(live.losses[key].item(), rel=1e-5)


def test_bad_settings_are_one_config_error():
    with pytest.raises(ConfigError, match="both must be fcos"):
        BCKD(_cfg(), _detector(0, "retinanet"), _detector(1, "retinanet"), (3, 32, 32))
    with pytest.raises(ConfigError, match="cls_kd"):
        BCKD(_cfg(cls_kd="kl"), _detector(0), _detector(1), (3, 32, 32))
    with pytest.raises(ConfigError, match="beta"):
        BCKD(_cfg(beta=-1.0), _detector(0), _detector(1), (3, 32, 32))
