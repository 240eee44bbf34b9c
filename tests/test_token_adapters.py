"""ViT tokens <-> CNN maps adapters, and a ViT teacher distilled into a CNN student through them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kd_engine.config import validate
from kd_engine.errors import ConfigError
from kd_engine.models.adapters import MapToTokens, TokensToMap, build_adapter, token_grid


def test_token_grid_is_inferred_or_given():
    assert token_grid(17, {}, "f") == ((4, 4), 1)
    assert token_grid(64, {}, "f") == ((8, 8), 0)
    assert token_grid(66, {}, "f") == ((8, 8), 2)  # class + distillation token (DeiT)
    assert token_grid(25, {"grid": [4, 6]}, "f") == ((4, 6), 1)
    with pytest.raises(ConfigError, match=r"^f.adapter_params: grid 4x4 with 0 prefix tokens"):
        token_grid(17, {"grid": [4, 4], "prefix_tokens": 0}, "f")
    with pytest.raises(ConfigError, match="cannot infer a square token grid from 23 tokens"):
        token_grid(23, {}, "f")


def _identity(layer: nn.Module) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.eye(layer.weight.shape[0]).reshape(layer.weight.shape))


def test_tokens_to_map_lays_patch_tokens_on_their_grid():
    tokens = torch.randn(2, 1 + 3 * 4, 5)
    adapter = TokensToMap(dim=5, channels=5, grid=(3, 4), prefix=1, size=(3, 4))
    _identity(adapter.proj)
    out = adapter(tokens)
    assert out.shape == (2, 5, 3, 4)
    for i in range(3):
        for j in range(4):  # row-major: token 1 + i*w + j is the patch at row i, column j
            torch.testing.assert_close(out[:, :, i, j], tokens[:, 1 + i * 4 + j])


def test_map_to_tokens_flattens_row_major_and_pools_the_class_token():
    fmap = torch.randn(2, 6, 4, 4)
    adapter = MapToTokens(channels=6, dim=6, grid=(2, 2), prefix=1)
    _identity(adapter.proj)
    out = adapter(fmap)
    assert out.shape == (2, 5, 6)
    x = fmap.numpy()
    blocks = x.reshape(2, 6, 2, 2, 2, 2).mean(axis=(3, 5))  # 2x2 average per grid cell, by numpy
    for i in range(2):
        for j in range(2):
            np.testing.assert_allclose(out[:, 1 + i * 2 + j].detach().numpy(), blocks[:, :, i, j], rtol=1e-5,
                                       atol=1e-6)
    np.testing.assert_allclose(out[:, 0].detach().numpy(), x.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)


def test_build_adapter_checks_shapes_and_params():
    layers = "student 's' and teacher 't'"
    assert isinstance(build_adapter("map_to_tokens", (16, 4, 4), (17, 32), "d.0", layers), MapToTokens)
    assert isinstance(build_adapter("tokens_to_map", (17, 32), (16, 2, 2), "d.0", layers), TokensToMap)
    with pytest.raises(ConfigError, match=r"^d.0: adapter tokens_to_map maps student tokens"):
        build_adapter("tokens_to_map", (16, 4, 4), (17, 32), "d.0", layers)
    with pytest.raises(ConfigError, match=r"^d.0.adapter_params: unknown parameter 'grd'"):
        build_adapter("map_to_tokens", (16, 4, 4), (17, 32), "d.0", layers, {"grd": [4, 4]})
    with pytest.raises(ConfigError, match=r"^d.0.adapter: unknown adapter 'tokens'.*map_to_tokens"):
        build_adapter("tokens", (16, 4, 4), (17, 32), "d.0", layers)
    with pytest.raises(ConfigError, match="use adapter: map_to_tokens"):
        build_adapter("conv1x1", (16, 4, 4), (17, 32), "d.0", layers)


@pytest.mark.parametrize("direction", ["vit_to_cnn", "cnn_to_vit"])
def test_feature_distillation_across_architectures_trains(tmp_path, direction):
    """A fitnet term between ViT tokens and CNN maps trains for one epoch, and the term falls."""
    from kd_engine.models import build_model
    from kd_engine.store import open_run
    from kd_engine.run import train
    from kd_engine.trainers.checkpoint import save_weights

    vit = {"name": "vit", "params": {"patch": 2, "dim": 16, "depth": 2, "heads": 2}}
    cnn = {"name": "resnet", "params": {"width": 4}}
    teacher, student = (vit, cnn) if direction == "vit_to_cnn" else (cnn, vit)
    adapter = "map_to_tokens" if direction == "vit_to_cnn" else "tokens_to_map"
    t_layer, s_layer = ("blocks.1", "layer2") if direction == "vit_to_cnn" else ("layer2", "blocks.1")
    path = tmp_path / "teacher.safetensors"  # an external teacher: no teacher training in the test
    torch.manual_seed(0)
    save_weights(build_model(type("S", (), teacher), (1, 8, 8), 10), path)
    cfg = validate({
        "name": direction, "epochs": 1, "threads": 1, "runs_dir": str(tmp_path / "runs"),
        "data": {"name": "digits", "split_seed": 0, "batch_size": 128},
        "teacher": {**teacher, "checkpoint": str(path)}, "student": student,
        "distill": {"terms": [{"loss": "kd"}, {"loss": "fitnet", "weight": 0.5, "student_layer": s_layer,
                                               "teacher_layer": t_layer, "adapter": adapter}]},
        "record": {"tensorboard": False, "instances": False, "eval_instances": False,
                   "features": [], "attention_maps": 0}})
    run = open_run(train(cfg).name, tmp_path / "runs")
    assert run.status() == "finished"
    fitnet = run.scalars(keys=["train/term/fitnet"])["value"].to_numpy()
    assert len(fitnet) > 1 and np.isfinite(fitnet).all() and fitnet[-1] < fitnet[0]


def test_an_unknown_adapter_fails_before_anything_is_built(tmp_path):
    from kd_engine.checks import check_names

    cfg = validate({"data": {"name": "digits"}, "teacher": {"name": "resnet"}, "student": {"name": "resnet"},
                    "distill": {"terms": [{"loss": "fitnet", "student_layer": "layer2", "teacher_layer": "layer2",
                                           "adapter": "mlp"}]}})
    with pytest.raises(ConfigError, match=r"^distill.terms.0.adapter: unknown adapter 'mlp' \(allowed: conv1x1, "
                                          r"linear, map_to_tokens, none, tokens_to_map\)$"):
        check_names(cfg)
