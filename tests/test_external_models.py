"""Models from torchvision, timm and a user's factory, built through the one `build_model` path,
and `kdw layers`."""
from __future__ import annotations

import contextlib
import io
import sys
import textwrap
from types import SimpleNamespace as Spec

import pytest
import torch
from torch import nn

from kd_engine import cli
from kd_engine.errors import ConfigError
from kd_engine.models import build_model, layer_shapes
from kd_engine.models.external import replace_head


def run_cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_torchvision_model_is_the_library_class_with_the_datasets_classes_and_channels():
    import torchvision

    model = build_model(Spec(name="torchvision", params={"arch": "resnet18"}), (1, 16, 16), 7)
    assert type(model) is torchvision.models.ResNet
    assert model.fc.out_features == 7 and model.conv1.in_channels == 1
    # the state_dict keys are torchvision's own, so a published checkpoint loads unchanged
    reference = torchvision.models.resnet18(num_classes=7)
    assert set(model.state_dict()) == set(reference.state_dict())
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 7)
    assert model.feature_layers == ["layer1", "layer2", "layer3", "layer4", "avgpool"]
    assert layer_shapes(model, (1, 16, 16), [model.embedding_layer])["avgpool"] == (512, 1, 1)


def test_torchvision_params_pass_through_and_mistakes_are_one_line():
    model = build_model(Spec(name="torchvision", params={"arch": "mobilenet_v3_small", "width_mult": 0.5}),
                        (3, 32, 32), 4)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    with pytest.raises(ConfigError, match=r"^student.params: .*'resnet181'.*closest: resnet18"):
        build_model(Spec(name="torchvision", params={"arch": "resnet181"}), (3, 32, 32), 4, field="student")
    with pytest.raises(ConfigError, match=r"^teacher.params: .*weights=.*nothing is downloaded"):
        build_model(Spec(name="torchvision", params={"arch": "resnet18", "weights": "DEFAULT"}),
                    (3, 32, 32), 4, field="teacher")


def test_torchvision_segmentation_model_returns_the_out_map():
    model = build_model(Spec(name="torchvision", params={"arch": "lraspp_mobilenet_v3_large"}), (3, 32, 32), 5)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5, 32, 32)
    assert all(not k.startswith("net.") for k in model.state_dict())


def test_timm_model_builds_without_download_and_refuses_pretrained():
    timm = pytest.importorskip("timm")
    model = build_model(Spec(name="timm", params={"arch": "resnet18"}), (1, 8, 8), 3)
    assert isinstance(model, timm.models.ResNet) and model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    assert model.feature_layers == ["act1", "layer1", "layer2", "layer3", "layer4"]
    vit = build_model(Spec(name="timm", params={"arch": "vit_tiny_patch16_224", "img_size": 16, "patch_size": 4}),
                      (3, 16, 16), 3)
    assert layer_shapes(vit, (3, 16, 16), ["blocks.0"])["blocks.0"] == (17, 192)
    with pytest.raises(ConfigError, match="pretrained=True: nothing is downloaded"):
        build_model(Spec(name="timm", params={"arch": "resnet18", "pretrained": True}), (3, 8, 8), 3)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_models_kdw.py").write_text(textwrap.dedent("""
        from torch import nn

        def small_net(width=4, num_classes=10):
            return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(width, num_classes))

        def fixed_head():
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 1000))
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_models_kdw"
    sys.modules.pop("my_models_kdw", None)


def test_import_target_calls_the_factory_with_its_params_and_the_classes(user_module):
    model = build_model(Spec(name="import", params={"target": f"{user_module}:small_net", "width": 6}),
                        (1, 8, 8), 3)
    assert model[0].out_channels == 6 and model[-1].out_features == 3
    with pytest.raises(ConfigError, match="1000 outputs, but the data has 3 classes.*resize_head"):
        build_model(Spec(name="import", params={"target": f"{user_module}:fixed_head"}), (1, 8, 8), 3)
    resized = build_model(Spec(name="import", params={"target": f"{user_module}:fixed_head",
                                                      "resize_head": True}), (1, 8, 8), 3)
    assert resized(torch.zeros(2, 1, 8, 8)).shape == (2, 3)


def test_a_missing_import_target_is_one_line_and_exit_2(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data: {name: digits}\nstudent: {name: import, params: {target: 'no_such_pkg.models:net'}}\n"
                      "epochs: 1\nthreads: 1\n")
    code, _, err = run_cli("train", str(config), "--runs-dir", str(tmp_path / "runs"))
    assert code == 2
    assert err.strip().count("\n") == 0
    assert err.startswith("error: student.params: ") and "cannot import 'no_such_pkg.models'" in err


def test_replace_head_swaps_the_last_linear():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1000))
    assert replace_head(model, 5) == "2"
    assert model[2].out_features == 5 and model[0].out_features == 8


def test_kdw_layers_lists_every_module_with_its_shape():
    code, out, _ = run_cli("layers", "resnet", "--input", "1x8x8", "--param", "width=8")
    assert code == 0
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:] if line.strip()}
    assert rows["layer2"][:3] == ["Sequential", "16x4x4", "feature"]
    assert rows["layer2.0.conv1"][:2] == ["Conv2d", "16x4x4"]
    assert rows["pool"][1:] == ["32", "embedding"]
    assert rows["fc"][1] == "10"
    code, out, _ = run_cli("layers", "torchvision:resnet18", "--input", "3x32x32")
    assert code == 0 and any(line.split()[:3] == ["layer3", "Sequential", "256x2x2"] for line in out.splitlines())


def test_kdw_layers_reads_a_config(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data: {name: digits}\nteacher: {name: vit, params: {patch: 2, dim: 16}}\n"
                      "student: {name: resnet, params: {width: 4}}\n")
    code, out, _ = run_cli("layers", str(config))
    assert code == 0
    assert "student: resnet" in out and "teacher: vit" in out and "on input 1x8x8" in out
    assert any(line.split()[:3] == ["blocks.1", "Block", "17x16"] for line in out.splitlines())


def test_wrong_layer_name_names_the_field_and_the_nearest_layers(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(textwrap.dedent("""
        data: {name: digits}
        epochs: 1
        threads: 1
        teacher: {name: resnet, params: {width: 8}, train: {epochs: 1}}
        student: {name: resnet, params: {width: 4}}
        distill:
          terms:
            - {loss: fitnet, student_layer: layer2, teacher_layer: layr2, adapter: conv1x1}
        """))
    code, _, err = run_cli("train", str(config), "--runs-dir", str(tmp_path / "runs"))
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: distill.terms.0.teacher_layer: unknown layer 'layr2'")
    assert "nearest: layer2" in err


def test_torchvision_detector_builds_untrained_at_the_image_size():
    model = build_model(Spec(name="torchvision", params={"arch": "fasterrcnn_mobilenet_v3_large_320_fpn"}),
                        (3, 96, 96), 4)
    assert model.roi_heads.box_predictor.cls_score.out_features == 4
    assert model.transform.min_size == (96,) and model.transform.max_size == 96
    assert model.feature_layers[-1] == "backbone.fpn"


def test_wrong_record_features_layer_fails_before_training(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(textwrap.dedent("""
        data: {name: digits}
        epochs: 1
        threads: 1
        teacher: {name: resnet, params: {width: 8}, checkpoint: t.safetensors}
        student: {name: resnet, params: {width: 4}}
        distill: {terms: [{loss: kd}]}
        record: {features: [{student: layer2, teacher: layer22}]}
        """))
    from kd_engine.trainers.checkpoint import save_weights

    save_weights(build_model(Spec(name="resnet", params={"width": 8}), (1, 8, 8), 10), tmp_path / "t.safetensors")
    code, _, err = run_cli("train", str(config), "--runs-dir", str(tmp_path / "runs"))
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: record.features.0.teacher: unknown layer 'layer22'") and "nearest: layer2" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
