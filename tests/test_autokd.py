"""Auto-KD's distiller space (paper 3, a reconstruction): transforms, distances, teacher features file."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from kd_engine.config import validate
from kd_engine.errors import ConfigError
from kd_engine.methods.autokd import DISTANCES, TRANSFORMS, AutoKD, TeacherFeatures, distance, transform
from kd_engine.models import build_model


def test_transform_shapes_and_hand_values():
    f = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert transform(f, "identity").shape == (2, 48)
    assert torch.allclose(transform(f, "gap"), f.mean(dim=(2, 3)))
    att = transform(f, "attention")
    assert att.shape == (2, 16) and torch.allclose(att.norm(dim=1), torch.ones(2))
    soft = transform(f, "channel_softmax", temperature=2.0).view(2, 3, 16)
    assert torch.allclose(soft.sum(-1), torch.ones(2, 3))
    assert transform(f, "pool124").shape == (2, 3 * (1 + 4 + 16))
    masked = transform(torch.ones(4, 2, 4, 4), "mask", generator=torch.Generator().manual_seed(0))
    assert torch.equal(masked[:2], masked[2:])  # student and teacher halves share one mask
    assert 0.3 < masked.mean().item() < 0.7


@pytest.mark.parametrize("name", DISTANCES)
def test_every_distance_is_zero_on_identical_vectors_and_positive_otherwise(name):
    torch.manual_seed(0)
    a, b = torch.randn(5, 12), torch.randn(5, 12)
    assert distance(a, a.clone(), name, 4.0).abs().max().item() < 1e-5
    assert (distance(a, b, name, 4.0) > 0).all()


def test_distance_hand_values():
    s, t = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 0.0, 3.0]])
    assert distance(s, t, "mse").item() == pytest.approx(4 / 3)
    assert distance(s, t, "l1").item() == pytest.approx(2 / 3)
    assert distance(s, 2 * s, "cosine").item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert distance(s, 3 * s + 1, "pearson").item() == pytest.approx(0.0, abs=1e-6)  # affine-free
    cos = (1 * 1 + 2 * 0 + 3 * 3) / (math.sqrt(14) * math.sqrt(10))
    assert distance(s, t, "cosine").item() == pytest.approx(1 - cos)


def _cache(tmp_path, n=6, shape=(4, 2, 2), layer="layer2"):
    rng = np.random.default_rng(0)
    inputs = rng.random((n, 64), dtype=np.float32)
    inputs[5] = inputs[1]  # a duplicate input: the teacher gives it the same output
    feats = rng.random((n, *shape), dtype=np.float32)
    feats[5] = feats[1]
    logits = rng.random((n, 10), dtype=np.float32)
    logits[5] = logits[1]
    for name, arr in (("inputs", inputs), ("features", feats), ("logits", logits)):
        np.save(tmp_path / f"{name}.npy", arr)
    (tmp_path / "meta.json").write_text(json.dumps({"layer": layer}))
    return inputs, feats, logits


def test_teacher_features_return_the_rows_of_the_given_inputs(tmp_path):
    inputs, feats, logits = _cache(tmp_path)
    cache = TeacherFeatures(str(tmp_path), "layer2")
    x = torch.from_numpy(inputs[[3, 0, 5, 3]]).view(4, 1, 8, 8)
    got_logits, got_feats = cache.lookup(x)
    assert torch.equal(got_logits, torch.from_numpy(logits[[3, 0, 1, 3]]))
    assert torch.equal(got_feats, torch.from_numpy(feats[[3, 0, 1, 3]]))
    with pytest.raises(ConfigError, match="not in the teacher features file"):
        cache.lookup(torch.zeros(1, 1, 8, 8) + 7)
    with pytest.raises(ConfigError, match="cached layer 'layer2'"):
        TeacherFeatures(str(tmp_path), "layer3")


def _cfg(**params):
    return validate({"name": "t", "method": "autokd", "student": {"name": "resnet", "params": {"width": 8}},
                     "teacher": {"name": "resnet", "params": {"width": 16}}, "distill": {"params": params}})


def test_cached_teacher_gives_the_same_loss_as_the_teacher(tmp_path):
    torch.manual_seed(0)
    student = build_model(_cfg().student, (1, 8, 8), 10)
    teacher = build_model(_cfg().teacher, (1, 8, 8), 10).eval()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    from kd_engine.models import feature_taps
    with torch.no_grad(), feature_taps(teacher, ["layer2"]) as taps:
        logits = teacher(x)
    np.save(tmp_path / "inputs.npy", x.flatten(1).numpy())
    np.save(tmp_path / "logits.npy", logits.numpy())
    np.save(tmp_path / "features.npy", taps["layer2"].numpy())
    (tmp_path / "meta.json").write_text(json.dumps({"layer": "layer2"}))
    params = {"transform": "attention", "distance": "kl", "temperature": 4, "weight": 5}
    torch.manual_seed(1)
    live = AutoKD(_cfg(**params), student, teacher, (1, 8, 8)).train()
    torch.manual_seed(1)
    cached = AutoKD(_cfg(**params, teacher_features=str(tmp_path)), student, None, (1, 8, 8)).train()
    a, b = live(x, y), cached(x, y)
    assert torch.allclose(a.losses["distill"], b.losses["distill"], atol=1e-5)
    assert torch.allclose(a.per_sample["term_autokd"], b.per_sample["term_autokd"], atol=1e-5)
    assert a.losses["distill"].item() == pytest.approx(5 * a.per_sample["term_autokd"].mean().item(), rel=1e-5)


@pytest.mark.parametrize("params, match", [
    ({"transfrom": "gap"}, "distill.params: unknown parameter 'transfrom'"),
    ({"transform": "fft"}, "distill.params.transform: 'fft'"),
    ({"distance": "emd"}, "distill.params.distance: 'emd'"),
    ({"weight": -1}, "distill.params.weight"),
])
def test_bad_params_are_one_line_errors(params, match):
    cfg = _cfg(**params)
    student = build_model(cfg.student, (1, 8, 8), 10)
    teacher = build_model(cfg.teacher, (1, 8, 8), 10)
    with pytest.raises(ConfigError, match=match):
        AutoKD(cfg, student, teacher, (1, 8, 8))


def test_space_names_match_the_reconstructed_space():
    assert TRANSFORMS == ("identity", "gap", "attention", "channel_softmax", "mask", "pool124")
    assert DISTANCES == ("mse", "l1", "cosine", "kl", "pearson", "cs")
