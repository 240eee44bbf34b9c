"""Models: output shapes, tappable features, attention maps, config errors, hook hygiene."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from kd_engine.errors import ConfigError
from kd_engine.models import MODELS, build_model, count_parameters, feature_taps, layer_shapes

DIGITS = (1, 8, 8)


def spec(name, **params):
    return SimpleNamespace(name=name, params=params)


def all_hooks(model):
    return sum(len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("name", ["resnet", "mlp", "vit"])
def test_logits_shape_and_backward(name):
    torch.manual_seed(0)
    model = build_model(spec(name), DIGITS, 10)
    x, y = torch.randn(5, *DIGITS), torch.randint(0, 10, (5,))
    logits = model(x)
    assert logits.shape == (5, 10)
    torch.nn.functional.cross_entropy(logits, y).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters()) > 1000
    # the advertised layers all exist and produce outputs
    names = list(dict.fromkeys(model.feature_layers + [model.embedding_layer]))
    shapes = layer_shapes(model, DIGITS, names)
    assert set(shapes) == set(names)
    emb = shapes[model.embedding_layer]
    assert len(emb) == 1  # the embedding is a flat vector per sample


def test_resnet_taps_shapes():
    model = build_model(spec("resnet", width=8), DIGITS, 10)
    with feature_taps(model, ["stem", "layer1", "layer2", "layer3", "pool"]) as feats:
        model(torch.randn(3, *DIGITS))
    assert feats["stem"].shape == (3, 8, 8, 8)
    assert feats["layer1"].shape == (3, 8, 8, 8)
    assert feats["layer2"].shape == (3, 16, 4, 4)
    assert feats["layer3"].shape == (3, 32, 2, 2)
    assert feats["pool"].shape == (3, 32)
    assert feats["pool"].requires_grad  # students are trained through taps
    assert all_hooks(model) == 0


def test_resnet_depth_and_tiny_input():
    model = build_model(spec("resnet", width=4, depth=2), (3, 2, 2), 3)
    assert len(model.layer2) == 2
    assert model(torch.randn(2, 3, 2, 2)).shape == (2, 3)


def test_mlp_layers():
    model = build_model(spec("mlp", hidden=32, layers=3), DIGITS, 10)
    assert model.feature_layers == ["hidden1", "hidden2", "hidden3"]
    assert model.embedding_layer == "hidden3"
    assert layer_shapes(model, DIGITS, "hidden2") == {"hidden2": (32,)}


def test_vit_attention_probs():
    model = build_model(spec("vit", patch=2, dim=16, depth=3, heads=2), DIGITS, 10)
    names = [f"blocks.{i}.attn.probs" for i in range(3)]
    with feature_taps(model, names + ["embed", "blocks.1"]) as feats:
        model(torch.randn(4, *DIGITS))
    tokens = (8 // 2) ** 2 + 1
    for n in names:
        p = feats[n]
        assert p.shape == (4, 2, tokens, tokens)
        assert torch.allclose(p.sum(-1), torch.ones(4, 2, tokens), atol=1e-5)
        assert (p >= 0).all()
    assert feats["embed"].shape == (4, 16)
    assert feats["blocks.1"].shape == (4, tokens, 16)
    assert model.feature_layers == ["blocks.0", "blocks.1", "blocks.2", "norm"]


def test_wrong_tap_name_lists_layers_and_hooks_are_removed():
    model = build_model(spec("resnet"), DIGITS, 10)
    with pytest.raises(ConfigError) as err:
        with feature_taps(model, ["layer1", "layr2"]):
            pass
    msg = str(err.value)
    assert "'layr2'" in msg and "ResNet" in msg
    for n in ("stem", "layer1", "layer2", "layer3", "pool"):
        assert n in msg
    assert all_hooks(model) == 0  # the valid name before the bad one left no hook behind


def test_hooks_removed_on_exception():
    model = build_model(spec("mlp"), DIGITS, 10)
    with pytest.raises(RuntimeError, match="boom"):
        with feature_taps(model, ["hidden1", "hidden2"]) as feats:
            assert len(model.hidden1._forward_hooks) == 1
            model(torch.randn(2, *DIGITS))
            assert feats["hidden1"].shape == (2, 256)
            raise RuntimeError("boom")
    assert len(model.hidden1._forward_hooks) == 0
    assert all_hooks(model) == 0


def test_layer_shapes_restores_mode():
    model = build_model(spec("resnet"), DIGITS, 10)
    model.train()
    bn = model.stem[1]
    before = bn.running_mean.clone()
    layer_shapes(model, DIGITS, ["layer2"])
    assert model.training
    assert torch.equal(bn.running_mean, before)  # eval mode: BN statistics untouched
    model.eval()
    layer_shapes(model, DIGITS, ["layer2"])
    assert not model.training


def test_unknown_param_names_field_and_allowed():
    with pytest.raises(ConfigError) as err:
        build_model(spec("resnet", widht=8), DIGITS, 10, field="teacher")
    msg = str(err.value)
    assert msg.startswith("teacher.params:") and "'widht'" in msg
    assert "width" in msg and "depth" in msg


def test_bad_values_and_names():
    with pytest.raises(ConfigError, match="model.name"):
        build_model(spec("resnett"), DIGITS, 10)
    with pytest.raises(ConfigError, match="patch"):
        build_model(spec("vit", patch=3), DIGITS, 10)
    with pytest.raises(ConfigError, match="heads"):
        build_model(spec("vit", dim=30, heads=4), DIGITS, 10)
    with pytest.raises(ConfigError, match="width"):
        build_model(spec("resnet", width=0), DIGITS, 10)


def test_registry_contents():
    assert set(MODELS.names()) >= {"resnet", "mlp", "vit"}
