"""GiftNet's parts: the composite generator, fMSE / PSNR (hand-built images), the foreground-weighted
loss, the foreground–background relation and its L1 (known answers, stop-gradient), the FiLM U-Net
and the method on a tiny batch."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kd_engine.config import validate
from kd_engine.data.composites import build_composites, make_composites, render
from kd_engine.dense_metrics import foreground_mse as np_fmse
from kd_engine.dense_metrics import image_mse, psnr
from kd_engine.errors import ConfigError
from kd_engine.losses.harmonization import (fg_bg_relation, foreground_mse, harmonization_loss, quadrant_prototypes,
                                            relation_l1)
from kd_engine.methods.giftnet import GiftNet
from kd_engine.models import build_model


def test_fmse_and_psnr_on_hand_built_images():
    real = np.zeros((1, 3, 2, 2))
    pred = real.copy()
    pred[0, :, 0, 0] = 0.5          # one foreground pixel off by 0.5 in every channel
    pred[0, 0, 1, 1] = 0.1          # one background pixel off by 0.1 in one channel
    mask = np.array([[[1.0, 1.0], [0.0, 0.0]]])
    # fMSE: (3 · 0.25) / (3 channels · 2 foreground pixels) = 0.125
    assert np_fmse(real, pred, mask)[0] == pytest.approx(0.125)
    mse = (3 * 0.25 + 0.01) / 12
    assert image_mse(real, pred)[0] == pytest.approx(mse)
    assert psnr(real, pred)[0] == pytest.approx(10 * math.log10(1 / mse))
    assert psnr(real, pred + 0.0)[0] == pytest.approx(psnr(pred, real)[0])
    assert math.isnan(np_fmse(real, pred, np.zeros((1, 2, 2)))[0])
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)
    assert foreground_mse(t(pred), t(real), t(mask), reduction="none").item() == pytest.approx(0.125)
    assert harmonization_loss(t(pred), t(real), t(mask), fg_weight=2.0).item() == pytest.approx(mse + 0.25)


def test_relation_is_the_cosine_to_quadrant_background_prototypes():
    # a 2x2 grid of 2-d features: each quadrant is one cell; the foreground is the top-left cell
    features = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]]])  # (1, 2, 2, 2)
    fg = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    protos = quadrant_prototypes(features, fg)
    assert torch.allclose(protos[0], torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]))
    rel = fg_bg_relation(features, fg)
    # position (0, 0) has feature (1, 0): cos to (0,0) is 0 (by eps), to (0,1) 0, to (1,0) 1, to (1,1) 1/√2
    assert torch.allclose(rel[0, 0], torch.tensor([0.0, 0.0, 1.0, 1 / math.sqrt(2)]), atol=1e-6)
    # L1 over the foreground rows only: position (0, 0); the other rows do not count
    other = rel.clone()
    other[0, 0] += 0.2
    other[0, 3] += 5.0
    assert relation_l1(other, rel, fg, reduction="none").item() == pytest.approx(0.2)
    assert relation_l1(rel, rel, fg).item() == 0.0


def test_relation_l1_stops_the_gradient_of_the_real_path():
    s = torch.randn(2, 4, 4, requires_grad=True)
    t = torch.randn(2, 4, 4, requires_grad=True)
    relation_l1(s, t, torch.ones(2, 1, 2, 2)).backward()
    assert s.grad is not None and t.grad is None


def test_composites_differ_from_the_real_image_only_in_the_foreground():
    rng = np.random.default_rng(0)
    comp, real, masks = make_composites(6, rng, size=16)
    assert comp.shape == real.shape == (6, 3, 16, 16) and masks.shape == (6, 16, 16)
    background = np.broadcast_to(masks[:, None] == 0, comp.shape)
    assert np.array_equal(comp[background], real[background])
    assert all(np.abs(comp[i][:, masks[i] > 0] - real[i][:, masks[i] > 0]).mean() > 0 for i in range(6))
    assert np.allclose(render(np.full((1, 3), 0.25), np.array([1.0, 2.0, 4.0]), 0.5), [[0.5, 1.0, 1.0]])


def test_composites_builder_and_bad_params():
    bundle = build_composites(SimpleNamespace(params={"n_train": 4, "n_val": 2, "n_test": 3, "size": 8}), seed=1)
    assert bundle.train.x.shape == (4, 4, 8, 8) and bundle.test.y.shape == (3, 3, 8, 8)
    assert bundle.test.ids.tolist() == [6, 7, 8] and bundle.train.y.dtype == torch.float32
    with pytest.raises(ConfigError, match="data.params.size"):
        build_composites(SimpleNamespace(params={"size": 10}), seed=0)


def _cfg(relation_weight=1.0, film=True):
    return validate({"name": "g", "device": "cpu", "threads": 1, "epochs": 1, "seed": 0, "method": "giftnet",
                     "data": {"name": "composites", "batch_size": 4, "params": {"n_train": 4, "n_val": 2, "n_test": 2,
                                                                                 "size": 8}},
                     "student": {"name": "film_unet", "params": {"width": 2, "film": film}},
                     "distill": {"params": {"relation_weight": relation_weight}}})


def test_method_trains_film_and_records_the_relation():
    cfg = _cfg()
    bundle = build_composites(cfg.data, 0)
    torch.manual_seed(0)
    model = build_model(cfg.student, (4, 8, 8), 3)
    method = GiftNet(cfg, model, None, (4, 8, 8))
    x, y = bundle.train.x, bundle.train.y
    assert torch.allclose(model(x), x[:, :3])  # a fresh network returns the composite
    out = method(x, y)
    assert set(out.losses) == {"task", "distill"}
    assert {k: v.shape for k, v in out.per_sample.items()} == {k: (4,) for k in ("reconstruction", "relation", "fmse")}
    out.total.backward()
    assert model.out.weight.grad.abs().sum() > 0
    plain = GiftNet(_cfg(0.0, film=False), build_model(_cfg(0.0, film=False).student, (4, 8, 8), 3), None, (4, 8, 8))
    assert set(plain(x, y).losses) == {"task"}


def test_method_refuses_a_teacher_and_other_models():
    cfg = _cfg()
    model = build_model(cfg.student, (4, 8, 8), 3)
    with pytest.raises(ConfigError, match="teacher"):
        GiftNet(cfg, model, model, (4, 8, 8))
    with pytest.raises(ConfigError, match="relation_weight"):
        GiftNet(_cfg(-1.0), model, None, (4, 8, 8))
