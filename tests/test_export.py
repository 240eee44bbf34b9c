"""`kd_engine.load_student` and `kdw export`: the trained student outside the workbench."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch

import kd_engine
from kd_engine import cli
from kd_engine.config import validate
from kd_engine.models import build_model
from kd_engine.trainers.checkpoint import load_weights


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from kd_engine.run import train

    base = tmp_path_factory.mktemp("export")
    cfg = validate({"name": "exported", "method": "scratch", "epochs": 1, "threads": 1,
                    "runs_dir": str(base / "runs"), "data": {"name": "digits", "split_seed": 0, "batch_size": 256},
                    "student": {"name": "torchvision", "params": {"arch": "mobilenet_v3_small",
                                                                  "width_mult": 0.25}},
                    "record": {"tensorboard": False, "instances": False, "eval_instances": False}})
    return train(cfg)


def export(run_dir: Path, fmt: str, output: Path) -> Path:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["export", run_dir.name, "--format", fmt, "--output", str(output),
                         "--runs-dir", str(run_dir.parent)])
    assert code == 0
    assert out.getvalue().strip() == str(output)
    return output


def test_load_student_is_the_library_model_with_the_runs_weights(run_dir):
    import torchvision

    student = kd_engine.load_student(run_dir.name, runs_dir=run_dir.parent)
    assert type(student) is torchvision.models.MobileNetV3 and not student.training
    reference = build_model(type("S", (), {"name": "torchvision", "params": {"arch": "mobilenet_v3_small",
                                                                             "width_mult": 0.25}}), (1, 8, 8), 10)
    load_weights(reference, run_dir / "checkpoints" / "student.safetensors")
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(student(x), reference.eval()(x))


def test_export_safetensors_and_torchscript_give_the_same_outputs(run_dir, tmp_path):
    student = kd_engine.load_student(run_dir)
    x = torch.randn(3, 1, 8, 8)
    expected = student(x)
    path = export(run_dir, "safetensors", tmp_path / "s.safetensors")
    rebuilt = build_model(type("S", (), {"name": "torchvision", "params": {"arch": "mobilenet_v3_small",
                                                                           "width_mult": 0.25}}), (1, 8, 8), 10)
    meta = load_weights(rebuilt, path)
    assert meta["model"] == "torchvision" and meta["input_shape"] == [1, 8, 8] and len(meta["class_names"]) == 10
    torch.testing.assert_close(rebuilt.eval()(x), expected)
    scripted = torch.jit.load(str(export(run_dir, "torchscript", tmp_path / "s.pt")))
    torch.testing.assert_close(scripted(x), expected)


def test_unknown_run_is_one_line(tmp_path):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.main(["export", "nope", "--runs-dir", str(tmp_path)]) == 2
    assert err.getvalue().startswith("error: ") and err.getvalue().count("\n") == 1


@pytest.mark.slow
def test_export_onnx_runs_in_the_onnx_reference_evaluator(run_dir, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from onnx.reference import ReferenceEvaluator

    student = kd_engine.load_student(run_dir)
    path = export(run_dir, "onnx", tmp_path / "s.onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    x = torch.randn(5, 1, 8, 8)  # another batch size than the export's example: the batch axis is dynamic
    (out,) = ReferenceEvaluator(model).run(None, {"image": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), student(x).detach(), rtol=1e-4, atol=1e-5)
