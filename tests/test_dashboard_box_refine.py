"""The Instances page on a box-refinement run (meta `task: box_refine`), rendered with AppTest
against a real one-epoch SSD-Det run of configs/ssd_det_shapes.yaml (tiny data): the test split
shows the mean IoUs of the recorded rows, the pseudo-vs-noisy IoU scatter and one image with its
true, noisy and pseudo boxes and its bags' proposals."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest_dashboard import REPO, open_page
from kd_engine.config import load_raw, validate
from kd_engine.store import open_run


@pytest.fixture(scope="module")
def refine_run(tmp_path_factory) -> tuple[Path, str]:
    from kd_engine.run import train

    base = tmp_path_factory.mktemp("runs_box_refine")
    raw = load_raw(REPO / "configs" / "ssd_det_shapes.yaml")
    raw.update(epochs=1, eval_every=1, runs_dir=str(base / "runs"), cache_dir=str(base / "cache"), device="cpu")
    raw["data"]["params"].update(n_train=32, n_val=0, n_test=16)
    raw["record"] = {"tensorboard": False, "attention_maps": 0}
    run_dir = train(validate(raw, "box refine dashboard test"), distributed=False)
    return base / "runs", Path(run_dir).name


def test_test_split_shows_ious_and_one_image_with_three_kinds_of_box(refine_run, monkeypatch):
    runs_dir, run_id = refine_run
    at = open_page(runs_dir, run_id, "instances", monkeypatch)
    at.radio(key="inst_split").set_value("test").run()
    assert not at.exception, [e.value for e in at.exception]
    rows = open_run(runs_dir / run_id).instances(split="test")
    shown = {m.label: m.value for m in at.metric}
    assert shown["mean IoU, pseudo boxes"] == f"{rows['pseudo_iou'].mean():.4f}"
    assert shown["mean IoU, noisy boxes"] == f"{rows['noisy_iou'].mean():.4f}"
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    image = next(s for s in specs if (s["layout"].get("title") or {}).get("text", "").startswith("image #"))
    image_id = int(image["layout"]["title"]["text"].split("#")[1].split(",")[0])
    objects = rows[rows["image_id"] == image_id]
    names = [t.get("name") for t in image["data"] if t.get("type") == "scatter"]
    assert names == ["true", "noisy", "pseudo"]
    # three boxes per object plus the bag's ten proposals each
    assert len(image["layout"]["shapes"]) == len(objects) * (3 + 10)


def test_methods_page_lists_ssd_det_with_its_notebook_and_config():
    """The Methods page computes SSD-Det's status from the repository: registered, a notebook and
    a demo config ("reproduced" once docs/results.md carries its rows)."""
    from workbench.pages import methods

    row = methods.catalogue().set_index("method").loc["SSD-Det"]
    assert row["status"] in ("notebook", "reproduced") and row["notebook"] == "notebooks/p01_ssd_det.ipynb"
    assert row["demo config"] == "configs/ssd_det_shapes.yaml" and "ssd_det" in row["registered as"].split(", ")


def test_compare_run_vs_run_and_teacher_view(refine_run, monkeypatch, tmp_path):
    """Two runs on the same scenes (MIL only against the shipped config): the means shown are the
    recorded rows', and the teacher-vs-student view explains there is no separate teacher."""
    from kd_engine.run import train

    runs_dir, run_id = refine_run
    raw = load_raw(REPO / "configs" / "ssd_det_shapes.yaml")
    raw.update(epochs=1, eval_every=1, runs_dir=str(runs_dir), cache_dir=str(tmp_path / "cache"), device="cpu",
               name="mil_only")
    raw["data"]["params"].update(n_train=32, n_val=0, n_test=16)
    raw["distill"]["params"].update(spsd=False, sisd=False)
    raw["record"] = {"tensorboard": False, "attention_maps": 0}
    other = Path(train(validate(raw, "mil only"), distributed=False)).name
    at = open_page(runs_dir, run_id, "compare", monkeypatch)
    assert any("self-distillation" in i.value for i in at.info)
    at.radio(key="cmp_mode").set_value("Run vs run").run()
    at.selectbox(key="cmp_a").set_value(run_id).run()
    at.selectbox(key="cmp_b").set_value(other).run()
    at.radio(key="cmp_rr_split").set_value("test").run()
    assert not at.exception, [e.value for e in at.exception]
    shown = {m.label: m.value for m in at.metric}
    b_rows = open_run(runs_dir / other).instances(split="test")
    assert shown["mean IoU, run B's pseudo boxes"] == f"{b_rows['pseudo_iou'].mean():.4f}"
    assert len([c for c in at.get("plotly_chart") if "image #" in c.proto.spec]) == 2
