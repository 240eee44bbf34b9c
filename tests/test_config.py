"""Config: --set overrides, one-line validation messages that name the key, YAML round trip."""
from __future__ import annotations

import pytest
import torch
import yaml

from conftest import BASE_CONFIG, digits_raw, write_config
from kd_engine.config import ExperimentConfig, apply_override, load_config, load_raw, stable_hash, validate
from kd_engine.errors import ConfigError


def raw_config(tmp_path):
    return digits_raw(tmp_path / "runs", tmp_path / "cache")


# -- --set overrides ------------------------------------------------------------------------------
def test_set_typed_values(tmp_path):
    raw = raw_config(tmp_path)
    for assignment in ("epochs=7", "optimizer.lr=0.125", "record.tensorboard=false", "name=other",
                       "grad_clip=null", "student.params={width: 4, depth: 2}", "optimizer.nesterov=yes"):
        apply_override(raw, assignment)
    assert raw["epochs"] == 7 and isinstance(raw["epochs"], int)
    assert raw["optimizer"]["lr"] == 0.125 and isinstance(raw["optimizer"]["lr"], float)
    assert raw["record"] == {"tensorboard": False}
    assert raw["name"] == "other" and raw["grad_clip"] is None
    assert raw["student"]["params"] == {"width": 4, "depth": 2}
    assert raw["optimizer"]["nesterov"] is True
    cfg = validate(raw)
    assert cfg.epochs == 7 and cfg.optimizer.lr == 0.125 and cfg.record.tensorboard is False
    assert cfg.student.params == {"width": 4, "depth": 2}


def test_set_nested_creates_mappings_and_keeps_siblings(tmp_path):
    raw = raw_config(tmp_path)
    apply_override(raw, "weighting.params.power=2")
    apply_override(raw, "teacher.train.optimizer.lr=0.2")
    assert raw["weighting"] == {"strategy": "uniform", "params": {"power": 2}}
    assert raw["teacher"]["train"] == {"epochs": 2, "optimizer": {"lr": 0.2}}
    assert raw["teacher"]["params"] == BASE_CONFIG["teacher"]["params"]


def test_set_list_index(tmp_path):
    raw = raw_config(tmp_path)
    raw["distill"]["terms"].append({"loss": "dkd", "weight": 1.0})
    apply_override(raw, "distill.terms.1.weight=0.25")
    apply_override(raw, "distill.terms.0.params.temperature=2")
    assert raw["distill"]["terms"][1] == {"loss": "dkd", "weight": 0.25}
    assert raw["distill"]["terms"][0]["params"] == {"temperature": 2}
    apply_override(raw, "distill.terms.1={loss: kd, weight: 3}")
    assert validate(raw).distill.terms[1].weight == 3.0


@pytest.mark.parametrize("assignment, needle", [
    ("epochs", "expected key=value"),
    ("distill.terms.3.weight=1", "distill.terms.3.weight"),
    ("distill.terms.x.weight=1", "distill.terms.x.weight"),
    ("distill.terms.1=1", "distill.terms.1"),
])
def test_bad_set_is_a_config_error(tmp_path, assignment, needle):
    with pytest.raises(ConfigError) as info:
        apply_override(raw_config(tmp_path), assignment)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_load_config_applies_overrides_then_validates(tmp_path):
    path = write_config(tmp_path / "c.yaml", raw_config(tmp_path))
    cfg = load_config(path, ["epochs=3", "data.batch_size=32", "distill.terms.0.weight=0.5"])
    assert (cfg.epochs, cfg.data.batch_size, cfg.distill.terms[0].weight) == (3, 32, 0.5)
    with pytest.raises(ConfigError, match=r"c\.yaml: epochs: .*greater than 0.*-1"):
        load_config(path, ["epochs=-1"])
    with pytest.raises(ConfigError, match="epochs.*'ten'"):
        load_config(path, ["epochs=ten"])


# -- validation messages --------------------------------------------------------------------------
@pytest.mark.parametrize("key, value, needles", [
    ("epoch", 3, ["unknown key 'epoch'", "allowed:", "epochs"]),
    ("optimizer.lrr", 0.1, ["unknown key 'optimizer.lrr'", "allowed:", "lr", "momentum"]),
    ("distill.terms.0.wieght", 1.0, ["unknown key 'distill.terms.0.wieght'", "weight"]),
    ("teacher.train.epoch", 2, ["unknown key 'teacher.train.epoch'", "epochs"]),
    ("epochs", 0, ["epochs:", "greater than 0", "got 0"]),
    ("epochs", "ten", ["epochs:", "integer", "'ten'"]),
    ("distill.terms.0.weight", -1.0, ["distill.terms.0.weight:", "greater than or equal to 0"]),
    ("device", "tpu", ["device:", "'cpu'", "'cuda'", "'auto'"]),
    ("distill.terms.0.adapter", "mlp", ["distill.terms.0.adapter:", "'conv1x1'", "'linear'"]),
    ("data.val_fraction", 1.5, ["data.val_fraction:", "1.5"]),
    ("name", "a/b", ["name:", "slashes"]),
    ("student", None, ["student:"]),
])
def test_validation_message_names_the_key(tmp_path, key, value, needles):
    raw = raw_config(tmp_path)
    from conftest import set_key

    set_key(raw, key, value)
    with pytest.raises(ConfigError) as info:
        validate(raw, "my.yaml")
    message = str(info.value)
    assert message.startswith("my.yaml: ") and "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)


def test_missing_required_key_and_teacher_dependency(tmp_path):
    raw = raw_config(tmp_path)
    del raw["student"]
    with pytest.raises(ConfigError, match="student: required key is missing"):
        validate(raw)
    raw = raw_config(tmp_path)
    del raw["teacher"]
    with pytest.raises(ConfigError, match="teacher"):
        validate(raw)


def test_several_errors_are_counted_on_one_line(tmp_path):
    raw = raw_config(tmp_path)
    raw["epochs"], raw["seed"] = -1, "x"
    with pytest.raises(ConfigError) as info:
        validate(raw)
    assert "(+1 more)" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("content, needle", [
    (b"a: [1, 2\n", "not valid YAML"),
    (b"- 1\n- 2\n", "got list"),
    (b"just a string\n", "got str"),
    (b"", "got NoneType"),
    (bytes(range(256)) * 4, "c.yaml"),
])
def test_load_raw_rejects_non_mappings(tmp_path, content, needle):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_raw(path)
    assert needle in str(info.value) and str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_raw(tmp_path / "absent.yaml")


# -- round trip -----------------------------------------------------------------------------------
def test_round_trip_through_yaml(tmp_path):
    raw = raw_config(tmp_path)
    raw["distill"]["terms"].append({"loss": "fitnet", "weight": 0.5, "student_layer": "layer2",
                                    "teacher_layer": "layer2", "adapter": "conv1x1"})
    raw["weighting"] = {"strategy": "teacher_confidence", "params": {"source": "target", "power": 2.0}}
    raw["record"] = {"features": [{"student": "layer1", "teacher": "layer1"}], "scalars_every": 3}
    cfg = validate(raw)
    again = validate(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()
    assert again.to_yaml() == cfg.to_yaml()
    # defaults are written out, so a saved config does not depend on future default changes
    dumped = yaml.safe_load(cfg.to_yaml())
    assert dumped["optimizer"]["momentum"] == 0.9 and dumped["record"]["scalars_every"] == 3
    path = write_config(tmp_path / "again.yaml", dumped)
    assert load_config(path) == cfg
    assert isinstance(cfg, ExperimentConfig)


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
    assert len(stable_hash({})) == 16


def test_unknown_optimizer_lists_the_registered_ones():
    from kd_engine.optim import build_optimizer

    cfg = validate(dict(raw_config_minimal(), optimizer={"name": "rmsprop"}))
    with pytest.raises(ConfigError) as info:
        build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(1))])
    message = str(info.value)
    for needle in ("optimizer.name", "'rmsprop'", "sgd", "adamw", "adam", "dot"):
        assert needle in message


def raw_config_minimal() -> dict:
    return {"student": {"name": "mlp"}}
