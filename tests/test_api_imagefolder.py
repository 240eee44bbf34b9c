"""Your teacher, your student, your images: a torchvision resnet18 state_dict saved as a `.pth`
with DataParallel's ``module.`` prefixes is distilled into a torchvision MobileNet on an
ImageFolder (``train/`` and ``val/``) for one epoch, once from a YAML config through ``kdw train``
and once through ``kd_engine.distill``. Both runs are listed by ``kdw runs`` and render on the
Instances and Attention pages (the Attention page rebuilds both models on demand)."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from kd_engine import cli
from kd_engine.store import Run, list_runs

pytestmark = pytest.mark.slow  # two real trainings and two dashboard sessions (~25 s each under load)
REPO = Path(__file__).resolve().parent.parent
CLASSES = ("circle", "stripes", "square")


def _image(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A 16x16 RGB picture of its class, with noise, so the classes differ."""
    yy, xx = np.mgrid[:16, :16]
    if kind == "circle":
        mask = (yy - 8) ** 2 + (xx - 8) ** 2 < 25
    elif kind == "stripes":
        mask = (xx // 3) % 2 == 0
    else:
        mask = (abs(yy - 8) < 5) & (abs(xx - 8) < 5)
    pixels = np.where(mask[..., None], [220, 60, 40], [30, 40, 200]) + rng.normal(0, 20, (16, 16, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    from torchvision.models import resnet18

    base = tmp_path_factory.mktemp("api_imagefolder")
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for kind in CLASSES:
            folder = base / "images" / split / kind
            folder.mkdir(parents=True)
            for k in range(count):
                Image.fromarray(_image(kind, rng)).save(folder / f"{k}.png")
    torch.manual_seed(0)
    teacher = resnet18(num_classes=len(CLASSES))
    torch.save({"state_dict": {"module." + k: v for k, v in teacher.state_dict().items()}}, base / "teacher.pth")
    return base


@pytest.fixture(scope="module")
def runs(workspace) -> dict[str, Path]:
    from torchvision import datasets, transforms
    from torchvision.models import mobilenet_v3_small, resnet18

    import kd_engine
    from kd_engine.weights import load_into

    runs_dir = workspace / "runs"
    config = {"name": "yaml_kd", "epochs": 1, "threads": 1, "runs_dir": str(runs_dir),
              "data": {"name": "imagefolder", "root": str(workspace / "images"), "image_size": 16, "batch_size": 4,
                       "val_fraction": 0.25},
              # a relative checkpoint path resolves against the config file's folder
              "teacher": {"name": "torchvision", "params": {"arch": "resnet18"}, "checkpoint": "teacher.pth"},
              "student": {"name": "torchvision", "params": {"arch": "mobilenet_v3_small"}},
              "distill": {"terms": [{"loss": "kd", "params": {"temperature": 4.0}}]},
              "record": {"tensorboard": False, "attention_maps": 4}}
    (workspace / "kd.yaml").write_text(yaml.safe_dump(config))
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["train", str(workspace / "kd.yaml"), "--run-id", "yaml_run"]) == 0

    to_tensor = transforms.ToTensor()
    train = datasets.ImageFolder(str(workspace / "images" / "train"), transform=to_tensor)
    val = datasets.ImageFolder(str(workspace / "images" / "val"), transform=to_tensor)
    teacher = resnet18(num_classes=len(CLASSES))
    load_into(teacher, workspace / "teacher.pth", "teacher")  # nested under state_dict, module. prefixes
    run = kd_engine.distill(teacher, mobilenet_v3_small(num_classes=len(CLASSES)), train, val,
                            terms=[{"loss": "kd", "params": {"temperature": 4.0}}], epochs=1,
                            runs_dir=runs_dir, name="api_kd", run_id="api_run", batch_size=4, threads=1,
                            record={"tensorboard": False, "attention_maps": 4})
    return {"yaml": runs_dir / "yaml_run", "api": run.run_dir}


def test_both_runs_finish_and_record_the_same_kinds_of_things(runs):
    yaml_run, api_run = Run(runs["yaml"]), Run(runs["api"])
    for run in (yaml_run, api_run):
        assert run.status() == "finished"
        assert run.meta()["teacher_origin"] == "external"  # neither teacher was trained by the engine
        assert run.checkpoint_path("teacher") and run.checkpoint_path("student")
    api_config = api_run.config()
    assert api_config["teacher"]["params"] == {"arch": "resnet18"}  # found, so the page can rebuild it
    assert api_config["student"]["params"] == {"arch": "mobilenet_v3_small"}
    assert not api_run.meta().get("not_rebuildable")
    rows = api_run.instances("train")
    assert len(rows) == 12 and rows["instance_id"].tolist() != [] and set(rows["label"]) == {0, 1, 2}
    # without ids, an item's id is its index; validation continues after the training ids
    assert sorted(rows["instance_id"]) == list(range(12))
    assert sorted(api_run.instances("val", epoch=0)["instance_id"]) == list(range(12, 18))
    assert api_run.meta()["class_names"] == list(sorted(CLASSES))
    assert api_run.meta()["sources"]["0"].endswith("circle/0.png")


def test_both_runs_are_listed_and_render_on_instances_and_attention(runs, monkeypatch):
    from streamlit.testing.v1 import AppTest

    runs_dir = runs["api"].parent
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["runs", "--runs-dir", str(runs_dir)]) == 0
    assert "yaml_run" in out.getvalue() and "api_run" in out.getvalue()
    assert set(list_runs(runs_dir)["run_id"]) == {"yaml_run", "api_run"}

    monkeypatch.setenv("KDW_RUNS_DIR", str(runs_dir))
    for run_id in ("yaml_run", "api_run"):
        at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=180)
        at.session_state["kdw_run"] = run_id
        at.run()
        for page in ("instances", "attention"):
            at.switch_page(f"workbench/pages/{page}.py").run()
            assert not at.exception, (run_id, page, [e.value for e in at.exception])
            assert not [e.value for e in at.error], (run_id, page)
        figures = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
        gradcam = [f for f in figures if "Grad-CAM" in (f["layout"].get("title") or {}).get("text", "")]
        assert gradcam and {"teacher", "student"} <= {t.get("name") for t in gradcam[0]["data"]}, run_id
