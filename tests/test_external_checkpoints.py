"""Teacher checkpoints and student inits from files the engine did not write."""
from __future__ import annotations

import contextlib
import io
import logging
import pickle
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kd_engine import cli
from kd_engine.config import load_config
from kd_engine.errors import CheckpointError
from kd_engine.models import build_model
from kd_engine.trainers.checkpoint import load_weights
from kd_engine.weights import teacher_origin

SPEC = type("Spec", (), {"name": "torchvision", "params": {"arch": "resnet18"}})


def resnet18(classes=10):
    return build_model(SPEC, (1, 8, 8), classes)


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("nest,prefix", [(None, ""), ("state_dict", "module."), ("model", "_orig_mod."),
                                         ("state_dict_ema", "module.")])
def test_pth_state_dict_loads_nested_and_prefixed(tmp_path, nest, prefix):
    source = resnet18()
    state = {prefix + k: v for k, v in source.state_dict().items()}
    path = tmp_path / "teacher.pth"
    torch.save(state if nest is None else {"epoch": 7, nest: state}, path)
    target = resnet18()
    assert not same_weights(source, target)
    assert load_weights(target, path) == {}
    assert same_weights(source, target)


def test_mismatch_names_missing_unexpected_and_reshaped(tmp_path):
    state = resnet18(classes=1000).state_dict()
    state.pop("layer1.0.conv1.weight")
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "t.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_weights(resnet18(), path, field="teacher.checkpoint")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"teacher.checkpoint: {path} does not fit the model")
    assert "missing 1 tensors (e.g. layer1.0.conv1.weight)" in message
    assert "1 unexpected (e.g. extra.weight)" in message
    assert "2 of another shape (e.g. fc.weight: (1000, 512) in the file, (10, 512) in the model)" in message


def test_strict_false_loads_what_fits_and_logs_one_line(tmp_path, caplog):
    source = resnet18(classes=1000)
    path = tmp_path / "imagenet_like.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    target = resnet18()
    fresh_fc = target.fc.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="kdw"):
        load_weights(target, path, field="student.init", strict=False)
    total = len(target.state_dict())
    assert [r.getMessage() for r in caplog.records] == [
        f"student.init: loaded {total - 2} of {total} tensors from {path}; 2 of another shape "
        "(e.g. fc.weight: (1000, 512) in the file, (10, 512) in the model)"]
    assert torch.equal(target.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert torch.equal(target.fc.weight, fresh_fc)


class _Exploit:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on pickle.dump's protocol
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_of_objects_is_refused_and_never_run(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"state_dict": _Exploit(str(marker))}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    config = tmp_path / "c.yaml"
    config.write_text("data: {name: digits}\nepochs: 1\nthreads: 1\n"
                      "teacher: {name: resnet, params: {width: 4}, checkpoint: evil.pth}\n"
                      "student: {name: resnet, params: {width: 4}}\ndistill: {terms: [{loss: kd}]}\n")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.main(["train", str(config), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert err.getvalue().count("\n") == 1
    assert err.getvalue().startswith(f"error: teacher.checkpoint: {path} holds pickled Python objects")
    assert not marker.exists()


def test_relative_weight_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project" / "configs"
    folder.mkdir(parents=True)
    (folder / "c.yaml").write_text(textwrap.dedent("""
        teacher: {name: resnet, checkpoint: ../weights/t.pth}
        student: {name: resnet, init: s.safetensors}
        """))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(folder / "c.yaml", ["student.params.width=8"])
    assert cfg.teacher.checkpoint == str(tmp_path / "project" / "weights" / "t.pth")
    assert cfg.student.init == str(folder / "s.safetensors")
    # an override typed on the command line is a path from the working directory, as given
    cfg = load_config(folder / "c.yaml", ["teacher.checkpoint=mine.pth"])
    assert cfg.teacher.checkpoint == "mine.pth"


def test_teacher_origin_tells_external_files_from_engine_runs(tmp_path):
    from kd_engine.trainers.checkpoint import save_weights

    model = resnet18()
    engine = tmp_path / "student.safetensors"
    save_weights(model, engine, {"model": "torchvision", "params": {"arch": "resnet18"},
                                 "data": {"name": "digits", "split_seed": 0}})
    external = tmp_path / "t.pth"
    torch.save(model.state_dict(), external)
    spec = type("T", (), {})
    spec.checkpoint = str(engine)
    assert teacher_origin(spec) == "engine"
    spec.checkpoint = str(external)
    assert teacher_origin(spec) == "external"
    spec.checkpoint = None  # trained and cached by the engine
    assert teacher_origin(spec) == "engine"
    assert teacher_origin(None) is None


@pytest.mark.slow
def test_pth_teacher_distils_into_a_timm_student_from_yaml(tmp_path, monkeypatch):
    """A torchvision resnet18 saved as a DDP-style .pth is the teacher of a timm MobileNet."""
    pytest.importorskip("timm")
    teacher = resnet18()
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save({"state_dict": {"module." + k: v for k, v in teacher.state_dict().items()}},
               weights / "teacher.pth")
    config = tmp_path / "c.yaml"
    config.write_text(textwrap.dedent("""
        name: tv_to_timm
        epochs: 1
        threads: 1
        data: {name: digits, split_seed: 0}
        teacher: {name: torchvision, params: {arch: resnet18}, checkpoint: weights/teacher.pth}
        student:
          name: timm
          params: {arch: mobilenetv3_small_050}
          init: weights/student_init.pth
          strict: false
        distill: {terms: [{loss: kd}]}
        record: {tensorboard: false, features: []}
        """))
    student = build_model(type("S", (), {"name": "timm", "params": {"arch": "mobilenetv3_small_050"}}),
                          (1, 8, 8), 10)
    torch.save(student.state_dict(), weights / "student_init.pth")
    monkeypatch.chdir(tmp_path.parent)  # the config's relative paths do not depend on the working directory
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["train", str(config), "--runs-dir", str(tmp_path / "runs")]) == 0
    from kd_engine.store import open_run

    run = open_run(Path(out.getvalue().strip()).name, tmp_path / "runs")
    assert run.status() == "finished"
    assert run.meta()["teacher_origin"] == "external"
    assert run.meta()["teacher_source"] == str(weights / "teacher.pth")
    # the dashboard rebuilds both models from the stored spec
    from kd_engine.inspection import RunInspector

    inspector = RunInspector(run.run_dir)
    assert same_weights(inspector.model("teacher"), teacher.eval())
    assert type(inspector.model("student")).__name__ == "MobileNetV3"
