"""The dense-prediction parts on their own: the digit-scene generator, the FCN, the per-pixel
distillation losses and the mIoU / RMSE metrics, with known answers computed independently (by
hand, by scikit-learn)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, jaccard_score, mean_squared_error

from kd_engine.config import DataConfig, ModelSpec
from kd_engine.data import build_data
from kd_engine.data.segmentation import BACKGROUND_DEPTH, make_scenes
from kd_engine.dense_metrics import image_miou, image_rmse, iou_per_class, miou, pixel_confusion, rmse
from kd_engine.errors import ConfigError
from kd_engine.losses import channel_kd, kd, pixel_kd, pixel_kl_map
from kd_engine.losses.terms import LOSSES
from kd_engine.models import build_model, feature_taps

LN3 = math.log(3.0)


# -- losses ---------------------------------------------------------------------------------------
def test_pixel_kd_zero_for_identical_and_per_image_shape():
    logits = torch.randn(3, 5, 4, 6)
    for loss in (pixel_kd, channel_kd):
        value = loss(logits, logits.clone(), temperature=2.0, reduction="none")
        assert value.shape == (3,)
        assert torch.equal(value, torch.zeros(3))


def test_pixel_kd_hand_computed_2x2():
    # T = 2: student logits (0, 2 ln 3) at two of the four pixels are (0, ln 3) after /T, so
    # q = (1/4, 3/4) against the teacher's p = (1/2, 1/2): KL = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3).
    # Mean over 4 pixels (two of them identical, KL 0) = 1/4 ln(4/3); times T^2 = 4 -> ln(4/3).
    teacher = torch.zeros(1, 2, 2, 2)
    student = torch.zeros(1, 2, 2, 2)
    student[0, 1, 0, 0] = student[0, 1, 1, 1] = 2 * LN3
    assert pixel_kd(student, teacher, temperature=2.0, reduction="none").item() == pytest.approx(math.log(4 / 3))
    kl = pixel_kl_map(student, teacher, temperature=2.0)[0]
    assert kl.numpy() == pytest.approx(np.array([[0.5 * math.log(4 / 3), 0.0], [0.0, 0.5 * math.log(4 / 3)]]))


def test_channel_kd_hand_computed():
    # Channel 0 over its two positions: teacher (0, 0) -> (1/2, 1/2), student (0, ln 3) ->
    # (1/4, 3/4): KL = 1/2 ln(4/3). Channel 1 is identical (KL 0). Mean over channels, T = 1.
    teacher = torch.zeros(1, 2, 1, 2)
    student = torch.zeros(1, 2, 1, 2)
    student[0, 0, 0, 1] = LN3
    assert channel_kd(student, teacher, temperature=1.0).item() == pytest.approx(0.25 * math.log(4 / 3))


def test_pixel_kd_equals_kd_when_one_pixel_and_channel_kd_is_zero_there():
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    dense = pixel_kd(s[:, :, None, None], t[:, :, None, None], temperature=3.0, reduction="none")
    assert torch.allclose(dense, kd(s, t, temperature=3.0, reduction="none"), atol=1e-6)
    assert torch.allclose(channel_kd(s[:, :, None, None], t[:, :, None, None], reduction="none"), torch.zeros(6))


def test_dense_losses_reduce_and_check_shapes_and_train_only_the_student():
    s = torch.randn(4, 3, 5, 5, requires_grad=True)
    t = torch.randn(4, 3, 5, 5, requires_grad=True)
    for loss in (pixel_kd, channel_kd):
        per_image = loss(s, t, reduction="none")
        assert (per_image > 0).all()
        assert loss(s, t, reduction="mean").item() == pytest.approx(per_image.mean().item())
        assert loss(s, t, reduction="sum").item() == pytest.approx(per_image.sum().item(), rel=1e-6)
        loss(s, t).backward()
        assert t.grad is None and s.grad is not None
        with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
            loss(s[:, :, :4], t)
        with pytest.raises(ValueError, match="reduction"):
            loss(s, t, reduction="avg")
    # registered wrapped for the `standardize` option of every logit term (functools.wraps keeps the original)
    assert LOSSES.get("pixel_kd").fn.__wrapped__ is pixel_kd and LOSSES.get("channel_kd").fn.__wrapped__ is channel_kd


# -- metrics --------------------------------------------------------------------------------------
TRUE = np.array([[[0, 0, 1], [1, 2, 2]], [[0, 2, 2], [1, 1, 0]]])
PRED = np.array([[[0, 1, 1], [1, 2, 0]], [[0, 2, 1], [1, 1, 0]]])


def test_iou_matches_sklearn_and_hand_values():
    conf = pixel_confusion(TRUE, PRED, 3)
    assert np.array_equal(conf, confusion_matrix(TRUE.ravel(), PRED.ravel(), labels=[0, 1, 2]))
    iou = iou_per_class(conf)
    # by hand: class 0: TP 3, FP 1, FN 1 -> 3/5; class 1: TP 4, FP 2, FN 0 -> 4/6; class 2: TP 2, FP 0, FN 2 -> 2/4
    assert iou == pytest.approx([3 / 5, 4 / 6, 2 / 4])
    assert iou == pytest.approx(jaccard_score(TRUE.ravel(), PRED.ravel(), average=None, labels=[0, 1, 2]))
    assert miou(TRUE, PRED, 3) == pytest.approx(np.mean([3 / 5, 4 / 6, 2 / 4]))
    assert miou(TRUE, TRUE, 3) == 1.0


def test_iou_absent_class_is_nan_and_skipped_and_ignore_index():
    iou = iou_per_class(pixel_confusion(TRUE, PRED, 5))
    assert np.isnan(iou[3:]).all()
    assert miou(TRUE, PRED, 5) == pytest.approx(miou(TRUE, PRED, 3))
    true = TRUE.copy()
    true[0, 0, 0] = 255  # ignored pixel
    conf = pixel_confusion(true, PRED, 3, ignore_index=255)
    assert conf.sum() == TRUE.size - 1 and conf[0, 0] == 2
    per_image = image_miou(TRUE, PRED, 3)
    assert per_image == pytest.approx([np.mean(jaccard_score(t.ravel(), p.ravel(), average=None, labels=[0, 1, 2]))
                                       for t, p in zip(TRUE, PRED)])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        pixel_confusion(TRUE, PRED, 2)


def test_rmse_matches_sklearn_and_hand_values():
    true = np.array([[[0.0, 1.0], [2.0, 3.0]], [[1.0, 1.0], [1.0, 1.0]]])
    pred = np.array([[[0.0, 1.0], [2.0, 5.0]], [[0.0, 0.0], [0.0, 0.0]]])
    assert rmse(true, pred) == pytest.approx(math.sqrt(mean_squared_error(true.ravel(), pred.ravel())))
    assert rmse(true, pred) == pytest.approx(math.sqrt((4 + 4) / 8))
    assert image_rmse(true, pred) == pytest.approx([1.0, 1.0])
    assert rmse(true, pred, mask=true < 3) == pytest.approx(math.sqrt(4 / 7))


# -- data and model -------------------------------------------------------------------------------
def test_scenes_labels_depths_and_cells():
    rng = np.random.default_rng(0)
    digits = np.zeros((2, 8, 8), dtype=np.float32)
    digits[0, 2:6, 2:6] = 1.0  # class 3: a 4x4 square of ink
    digits[1, :, 3:5] = 0.5  # class 7: a faint bar
    x, label, depth = make_scenes(digits, np.array([3, 7]), 50, rng, grid=2, max_digits=4, scale=1, noise=0.0)
    assert x.shape == (50, 1, 16, 16) and label.shape == depth.shape == (50, 16, 16)
    assert set(np.unique(label)) <= {0, 4, 8}
    assert (depth[label == 0] == BACKGROUND_DEPTH).all() and (depth[label > 0] < 0.95).all()
    ink = label > 0
    assert np.allclose(x[:, 0][ink] / np.where(label[ink] == 4, 1.0, 0.5), 1.1 - depth[ink], atol=1e-6)
    assert (x[:, 0][~ink] == 0).all()
    cells = label.reshape(50, 2, 8, 2, 8).transpose(0, 1, 3, 2, 4).reshape(50, 4, 64)
    for scene in cells:  # each cell holds one whole digit (16 ink pixels for either test digit) or nothing
        kinds = [tuple(np.unique(c)) for c in scene]
        assert all(k in ((0,), (0, 4), (0, 8)) for k in kinds)
        assert 1 <= sum(k != (0,) for k in kinds) <= 4
        assert all((c > 0).sum() == 16 for c in scene if c.any())
    big = make_scenes(digits, np.array([3, 7]), 3, rng, grid=3, scale=2)[1]
    assert big.shape == (3, 48, 48)


def test_digit_scenes_bundle_is_seeded_and_checked():
    cfg = DataConfig(name="digit_scenes", params={"n_train": 20, "n_val": 5, "n_test": 6})
    a, b = build_data(cfg, 3), build_data(cfg, 3)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.maps["depth"], b.test.maps["depth"])
    assert not torch.equal(a.train.y, build_data(cfg, 4).train.y)
    assert a.num_classes == 11 and a.class_names[0] == "background" and a.input_shape == (1, 16, 16)
    assert a.test.ids.tolist() == list(range(25, 31))
    sub = a.train.subset([2, 0])
    assert torch.equal(sub.maps["depth"][1], a.train.maps["depth"][0]) and sub.ids.tolist() == [2, 0]
    for params, field in (({"n_train": 0}, "n_train"), ({"ink": 2}, "ink"), ({"colour": 1}, "colour"),
                          ({"grid": 0}, "grid")):
        with pytest.raises(ConfigError, match=f"data.params.*{field}"):
            build_data(DataConfig(name="digit_scenes", params=params), 0)
    with pytest.raises(ConfigError, match="data.image_size: digit scenes are .* 16 px"):
        build_data(DataConfig(name="digit_scenes", image_size=32), 0)
    assert build_data(DataConfig(name="digit_scenes", image_size=32, params={"n_train": 4, "n_val": 2, "n_test": 2,
                                                                               "scale": 2}), 0).input_shape == (1, 32, 32)


def test_fcn_outputs_per_pixel_logits_and_a_depth_tap():
    model = build_model(ModelSpec(name="fcn", params={"width": 4, "depth_head": True}), (1, 16, 16), 11)
    with feature_taps(model, ["depth_map", "enc2"]) as feats:
        out = model(torch.randn(2, 1, 16, 16))
    assert out.shape == (2, 11, 16, 16) and feats["depth_map"].shape == (2, 1, 16, 16)
    assert feats["enc2"].shape == (2, 16, 4, 4) and model.dense_outputs == {"depth": "depth_map"}
    with pytest.raises(ConfigError, match="multiples of 4"):
        build_model(ModelSpec(name="fcn"), (1, 18, 18), 11)
    with pytest.raises(ConfigError, match="depth_head"):
        build_model(ModelSpec(name="fcn", params={"depth_head": "yes"}), (1, 16, 16), 11)
