"""The Python API (`kd_engine.api`): the same run as `kdw train` from the same weights and
batches, `Trainer.fit` one call at a time giving the very run `run()` gives, ids from the dataset
index, one-line errors, and a model no spec rebuilds (recorded probe maps; the Attention page says
why attributions are unavailable)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kd_engine
from kd_engine.config import validate
from kd_engine.errors import ConfigError, DataError
from kd_engine.models import build_model
from kd_engine.store import Run

REPO = Path(__file__).resolve().parent.parent
TEACHER = {"name": "resnet", "params": {"width": 8, "depth": 1}}
STUDENT = {"name": "resnet", "params": {"width": 4, "depth": 1}}
QUIET = {"tensorboard": False, "attention_maps": 2}


def _toy(n: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.arange(n) % 3


def _models(classes: int = 3):
    torch.manual_seed(0)
    return build_model(validate({"student": TEACHER}).student, (1, 8, 8), classes), \
        build_model(validate({"student": STUDENT}).student, (1, 8, 8), classes)


def _trainer(tmp_path, name, **options):
    teacher, student = _models()
    x, y = _toy()
    return kd_engine.make_trainer(teacher, student, TensorDataset(x[:18], y[:18]), TensorDataset(x[18:], y[18:]),
                                  teacher_spec=TEACHER, student_spec=STUDENT, epochs=2, batch_size=5,
                                  runs_dir=tmp_path / "runs", name=name, run_id=name, threads=1,
                                  record=QUIET, **options)


def _weights(run_dir: Path) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in load_file(str(run_dir / "checkpoints" / "student.safetensors")).items()}


def test_the_api_run_is_the_kdw_train_run(tmp_path):
    """The digits split through the API (its tensors and ids, the same initial weights) gives
    the same losses step for step, the same rows and the same final weights as `kdw train`."""
    from kd_engine.data import build_data
    from kd_engine.run import train

    teacher, student = _models(10)
    save_file(teacher.state_dict(), str(tmp_path / "teacher.safetensors"))
    save_file(student.state_dict(), str(tmp_path / "student0.safetensors"))
    raw = {"name": "same", "epochs": 1, "threads": 1, "runs_dir": str(tmp_path / "runs"),
           "data": {"name": "digits", "split_seed": 0, "batch_size": 128},
           "teacher": {**TEACHER, "checkpoint": str(tmp_path / "teacher.safetensors")},
           "student": {**STUDENT, "init": str(tmp_path / "student0.safetensors")},
           "distill": {"terms": [{"loss": "kd"}]}, "record": QUIET}
    cli_run = Run(train(validate(raw), run_id="cli"))
    cfg = validate(raw)
    data = build_data(cfg.data, cfg.seed)
    splits = [TensorDataset(s.x, s.y, s.ids) for s in (data.train, data.val, data.test)]
    api_run = kd_engine.distill(teacher, student, *splits[:2], test_data=splits[2], teacher_spec=TEACHER, student_spec=STUDENT,
                                terms=["kd"], epochs=1, batch_size=128, runs_dir=tmp_path / "runs",
                                name="same", run_id="api", threads=1, record=QUIET,
                                class_names=data.class_names)
    losses = [run.scalars(keys=["train/loss"]).sort_values("step")["value"].to_numpy() for run in (cli_run, api_run)]
    assert len(losses[0]) == len(data.train) // 128 + 1
    np.testing.assert_array_equal(losses[0], losses[1])
    columns = ["instance_id", "step", "student_loss", "student_pred", "teacher_pred"]
    rows = [run.instances("train")[columns].sort_values(["step", "instance_id"]).reset_index(drop=True)
            for run in (cli_run, api_run)]
    assert rows[0].equals(rows[1])
    ours, theirs = _weights(api_run.run_dir), _weights(cli_run.run_dir)
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    finals = [run.final_metrics() for run in (cli_run, api_run)]
    assert finals[0]["test/student_acc"] == finals[1]["test/student_acc"] > 0.1
    assert finals[0]["val/student_acc"] == finals[1]["val/student_acc"]
    assert api_run.meta()["dataset"] == "python" and api_run.meta()["made_by"] == "kd_engine.distill"


def test_fit_in_pieces_is_the_same_run_as_run(tmp_path):
    whole = _trainer(tmp_path, "whole")
    whole_dir = whole.run()
    pieces = _trainer(tmp_path, "pieces")
    got = []
    got += pieces.fit(steps=2)  # mid-epoch (4 steps of 5, 5, 5, 3 per epoch)
    assert pieces.global_step == 2 and not Run(pieces.run_dir).checkpoint_path("student")
    pieces.model.eval()  # the caller may evaluate in between; fit puts the model back in training
    got += pieces.fit(steps=2)  # ends epoch 0: its validation and checkpoint run within the call
    assert Run(pieces.run_dir).checkpoint_path("student") and Run(pieces.run_dir).instance_epochs("val") == [0]
    got += pieces.fit(steps=1)
    got += pieces.fit(epochs=1)  # the rest of epoch 1, then the final evaluation
    assert pieces.finished and pieces.fit(steps=3) == []
    assert len(got) == 8 and Run(pieces.run_dir).status() == "finished"
    expected = Run(whole_dir).scalars(keys=["train/loss"]).sort_values("step")["value"].to_numpy()
    np.testing.assert_allclose([float(v) for v in got], expected, rtol=1e-6)
    measured = Run(pieces.run_dir).scalars(keys=["train/loss"]).sort_values("step")["value"].to_numpy()
    np.testing.assert_array_equal(measured, expected)
    ours, theirs = _weights(pieces.run_dir), _weights(whole_dir)
    assert all(np.array_equal(ours[k], theirs[k]) for k in theirs)


def test_close_records_a_paused_run_as_stopped(tmp_path):
    trainer = _trainer(tmp_path, "closed")
    assert len(trainer.fit(steps=2)) == 2
    trainer.close()
    assert Run(trainer.run_dir).status() == "stopped" and trainer.finished and trainer.fit() == []
    trainer.close()  # once ended, nothing more happens


def test_ids_come_from_the_dataset_index_and_loaders_give_their_batch_size(tmp_path):
    trainer = _trainer(tmp_path, "ids")
    assert trainer.data.train.ids.tolist() == list(range(18)) and trainer.data.val.ids.tolist() == list(range(18, 24))
    x, y = _toy()
    teacher, student = _models()
    loader = DataLoader(TensorDataset(x, y, torch.arange(100, 124)), batch_size=7, shuffle=True)
    trainer = kd_engine.make_trainer(teacher, student, loader, teacher_spec=TEACHER, student_spec=STUDENT,
                                     runs_dir=tmp_path / "runs", threads=1, record=QUIET)
    assert trainer.data.train.ids.tolist() == list(range(100, 124))  # given ids, in dataset order
    assert trainer.cfg.data.batch_size == 7 and len(trainer.data.val) == 0


@pytest.mark.parametrize("make, message", [
    (lambda x, y: (TensorDataset(x, y), TensorDataset(x[:4], y[:4], torch.arange(4))), "its ids overlap those of another split"),
    (lambda x, y: ([(x[0].numpy(), 0)] * 4, None), "not a tensor"),
    (lambda x, y: (TensorDataset(x, y, torch.zeros(len(x), dtype=torch.long)), None), "ids repeat"),
    (lambda x, y: (TensorDataset(x, y + 5), None), "labels must lie in [0, 3)"),
])
def test_bad_data_is_one_line(tmp_path, make, message):
    x, y = _toy()
    train, val = make(x, y)
    teacher, student = _models()
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace(")", r"\)")):
        kd_engine.make_trainer(teacher, student, train, val, num_classes=3, runs_dir=tmp_path / "runs")


def test_fit_arguments_and_a_spec_that_does_not_fit_are_refused(tmp_path):
    trainer = _trainer(tmp_path, "args")
    for bad in ({"steps": 0}, {"epochs": -1}, {"steps": 1.5}):
        with pytest.raises(ConfigError, match="fit: (steps|epochs) must be a positive integer"):
            trainer.fit(**bad)
    teacher, student = _models()
    x, y = _toy()
    with pytest.raises(ConfigError, match="student_spec: .* does not build a model with the student's"):
        kd_engine.make_trainer(teacher, student, TensorDataset(x, y), student_spec=TEACHER,
                               runs_dir=tmp_path / "runs")


@pytest.mark.slow
def test_the_api_distils_and_loads_without_the_extras(tmp_path):
    """With every extras-only package (streamlit, plotly, ...) blocked at import time, `import
    kd_engine`, a distillation through the API and `load_student` work."""
    from test_packaging import EXTRAS_ONLY

    code = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRAS_ONLY!r}:
            raise ImportError(name)
sys.meta_path.insert(0, Block())
import torch, kd_engine
from torch.utils.data import TensorDataset
from torchvision.models import resnet18, mobilenet_v3_small
x, y = torch.rand(12, 3, 16, 16), torch.arange(12) % 3
run = kd_engine.distill(resnet18(num_classes=3), mobilenet_v3_small(num_classes=3), TensorDataset(x, y),
                        runs_dir={str(tmp_path / "runs")!r}, batch_size=6, threads=1, record={{"tensorboard": False}})
print(run.status(), type(kd_engine.load_student(run)).__name__)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["finished", "MobileNetV3"]


def _private_student() -> nn.Module:
    class Local(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).mean((2, 3)))

    return Local()


@pytest.mark.slow
def test_a_model_no_spec_rebuilds_records_its_maps_and_the_page_says_why(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    teacher, _ = _models()
    x, y = _toy()
    run = kd_engine.distill(teacher, _private_student(), TensorDataset(x[:18], y[:18]),
                            TensorDataset(x[18:], y[18:]), teacher_spec=TEACHER, epochs=1, batch_size=6,
                            runs_dir=tmp_path / "runs", run_id="private", threads=1, record=QUIET)
    assert run.config()["student"]["name"] == "python"
    reason = run.meta()["not_rebuildable"]["student"]
    assert "Local" in reason and "student_spec" in reason
    recorded = run.artifacts("attention_map")
    assert {"student", "teacher"} <= set(recorded["role"])  # the probe's maps, recorded in training
    with pytest.raises(Exception, match="no registry spec or import target"):
        kd_engine.load_student(run)

    monkeypatch.setenv("KDW_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=180)
    at.session_state["kdw_run"] = "private"
    at.run()
    at.switch_page("workbench/pages/attention.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("On-demand attributions are unavailable for the student" in i.value for i in at.info)
    assert any(s.value == "Recorded attention maps" for s in at.subheader)


def test_a_split_over_the_memory_limit_goes_to_the_streaming_wrapper(monkeypatch):
    """The hold-or-stream choice: small splits are read into memory, larger ones handed to the
    data layer's ``stream_dataset`` (ids from the index, after the earlier splits')."""
    from kd_engine import api

    calls = []
    monkeypatch.setattr(api, "_streamer", lambda: lambda dataset, ids, name: calls.append((len(dataset), list(ids), name)) or "streamed")
    x, y = _toy()
    monkeypatch.setattr(api, "MEMORY_LIMIT", 24 * 64)  # exactly the 24 toy images of 1x8x8
    assert api.instance_dataset(TensorDataset(x, y), 0, "train").x.shape == (24, 1, 8, 8) and not calls
    monkeypatch.setattr(api, "MEMORY_LIMIT", 24 * 64 - 1)
    assert api.instance_dataset(TensorDataset(x, y), 100, "val") == "streamed"
    assert calls == [(24, list(range(100, 124)), "val")]
