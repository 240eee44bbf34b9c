"""The CIFAR model zoo of the KD literature: parameter counts at 100 classes against the published
tables (to the 0.01 M papers print), and every model's named taps."""
from __future__ import annotations

import pytest
import torch

from kd_engine.models import MODELS, count_parameters, layer_shapes
from kd_engine.models.cifar_compact import channel_shuffle

# Millions of parameters at 100 classes. The first four are the figures the issue quotes from the
# CIFAR-100 KD tables; the others are the counts those tables print for the remaining pairs.
PUBLISHED_M = {
    "resnet32x4": 7.43, "resnet8x4": 1.23, "wrn_40_2": 2.25, "wrn_16_2": 0.70,
    "resnet56": 0.86, "resnet110": 1.73, "vgg13": 9.46, "vgg8": 3.96,
    "mobilenetv2_cifar": 0.81, "shufflenetv1": 0.95, "shufflenetv2": 1.36,
    "resnet20": 0.28, "resnet32": 0.47, "wrn_40_1": 0.57, "resnet50_cifar": 23.71,
}
ZOO = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
       "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "wrn_28_4",
       "vgg8", "vgg11", "vgg13", "mobilenetv2_cifar", "shufflenetv1", "shufflenetv2", "resnet50_cifar"]


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_parameter_count_matches_literature(name):
    model = MODELS.get(name)((3, 32, 32), 100)
    millions = count_parameters(model) / 1e6
    # tables print two decimals, some rounded (ShuffleNetV1 0.949 -> 0.95), some cut (WRN-40-2
    # 2.255 -> 2.25, ResNet-110 1.737 -> 1.73): either way within 0.01 M of the exact count
    assert round(millions, 2) == PUBLISHED_M[name] or int(millions * 100) / 100 == PUBLISHED_M[name]


@pytest.mark.parametrize("name", ZOO)
def test_forward_and_named_taps(name):
    model = MODELS.get(name)((3, 32, 32), 100)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    shapes = layer_shapes(model, (3, 32, 32), model.feature_layers)
    assert shapes[model.embedding_layer] == (model.fc.in_features,)
    assert all(len(s) == 3 for n, s in shapes.items() if n != model.embedding_layer)


def test_x4_pairs_share_stage_shapes_for_feature_distillation():
    """resnet32x4 -> resnet8x4 and wrn_40_2 -> wrn_16_2 distil stage to stage without adapters."""
    for teacher, student in (("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8")):
        t, s = MODELS.get(teacher)((3, 32, 32), 100), MODELS.get(student)((3, 32, 32), 100)
        assert layer_shapes(t, (3, 32, 32), ["layer2"]) == layer_shapes(s, (3, 32, 32), ["layer2"])


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_zoo_names_take_no_params():
    from kd_engine.config import ModelSpec
    from kd_engine.errors import ConfigError
    from kd_engine.models import build_model

    with pytest.raises(ConfigError, match="student.params"):
        build_model(ModelSpec(name="resnet8x4", params={"width": 2}), (3, 32, 32), 100, field="student")
