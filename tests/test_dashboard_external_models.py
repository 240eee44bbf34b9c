"""A run whose teacher is a torchvision model loaded from a .pth and whose student is another
torchvision architecture is listed by `kdw runs` and renders on the Instances and Attention pages
(the Attention page rebuilds both models from the stored specs)."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from kd_engine import cli
from kd_engine.config import validate
from kd_engine.models import build_model


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    from kd_engine.run import train

    base = tmp_path_factory.mktemp("external_dash")
    teacher_spec = {"name": "torchvision", "params": {"arch": "resnet18"}}
    torch.manual_seed(0)
    teacher = build_model(type("S", (), teacher_spec), (1, 8, 8), 10)
    torch.save({"model": {"module." + k: v for k, v in teacher.state_dict().items()}}, base / "teacher.pth")
    cfg = validate({
        "name": "tv_dash", "epochs": 1, "threads": 1, "runs_dir": str(base / "runs"),
        "data": {"name": "digits", "split_seed": 0},
        "teacher": {**teacher_spec, "checkpoint": str(base / "teacher.pth")},
        "student": {"name": "torchvision", "params": {"arch": "mobilenet_v3_small", "width_mult": 0.25}},
        "distill": {"terms": [{"loss": "kd"}]},
        "record": {"tensorboard": False, "features": [], "attention_maps": 4}})
    train(cfg)
    return base / "runs"


@pytest.mark.slow
def test_external_models_run_is_listed_and_renders(runs_dir, monkeypatch):
    from streamlit.testing.v1 import AppTest

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["runs", "--runs-dir", str(runs_dir)]) == 0
    assert "torchvision(arch=mobilenet_v3_small, width_mult=0.25)" in out.getvalue()
    assert "torchvision(arch=resnet18)" in out.getvalue()

    monkeypatch.setenv("KDW_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "streamlit_app.py"),
                           default_timeout=180).run()
    for name in ("instances", "attention"):
        at.switch_page(f"workbench/pages/{name}.py").run()
        assert not at.exception, [e.value for e in at.exception]
    figures = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
    gradcam = [f for f in figures if "Grad-CAM" in (f["layout"].get("title") or {}).get("text", "")]
    assert gradcam and {"teacher", "student"} <= {t.get("name") for t in gradcam[0]["data"]}
    assert not [e.value for e in at.error]
