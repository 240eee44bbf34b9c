"""The Instances page on a per-azimuth room run (meta `task: echo_depth`), rendered with AppTest
against a real one-epoch SAM run of configs/sam_echoes.yaml (tiny): training rows show the task
and alignment losses per room; the test split shows RMSE/abs-rel/mIoU, a room's depth per
azimuth (truth, teacher, student: the recorded maps) and the cross-attention azimuth x echo time."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest_dashboard import REPO, charts, open_instances, open_page
from kd_engine.config import load_raw, validate
from kd_engine.store import open_run


@pytest.fixture(scope="module")
def echo_run(tmp_path_factory) -> tuple[Path, str]:
    from kd_engine.run import train

    base = tmp_path_factory.mktemp("runs_echo")
    raw = load_raw(REPO / "configs" / "sam_echoes.yaml")
    raw.update(epochs=1, runs_dir=str(base / "runs"), cache_dir=str(base / "cache"), device="cpu")
    raw["data"].update(params={"rooms": 40, "test_rooms": 8}, batch_size=16)
    raw["teacher"]["train"]["epochs"] = 1
    raw["record"] = {"tensorboard": False, "attention_maps": 4}
    run_dir = train(validate(raw, "echo dashboard test"), distributed=False)
    return base / "runs", Path(run_dir).name




def test_echo_views_on_train_and_test(echo_run, monkeypatch):
    runs_dir, run_id = echo_run
    at = open_instances(runs_dir, run_id, monkeypatch)
    titles = list(charts(at))
    assert any(t.startswith("student_loss") for t in titles) and any(t.startswith("align_loss") for t in titles)
    at.radio(key="inst_split").set_value("test").run()
    assert not at.exception, [e.value for e in at.exception]
    run = open_run(runs_dir / run_id)
    final = run.final_metrics()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["student rmse"] == f"{final['test/student_rmse']:.4f}"
    found = charts(at)
    polar = next(v for k, v in found.items() if "depth per azimuth" in k)
    curves = {t["name"]: t["r"] for t in polar["data"] if t.get("mode") == "lines"}
    room = int(at.selectbox(key="echo_room").value)
    ids = json.loads(run.artifacts("azimuth_map").set_index("name").loc["echo/test/true_depth", "meta"])["instance_ids"]
    stored = run.load_artifact("echo/test/student_depth")[ids.index(room)]
    np.testing.assert_allclose(curves["student"][:-1], stored, rtol=1e-5)
    assert set(curves) == {"truth", "teacher", "student"}
    attention = next(v for k, v in found.items() if "azimuth query x echo time" in k)
    heat = next(t for t in attention["data"] if t["type"] == "heatmap")
    assert np.asarray(heat["z"]).shape == (64, 32)
    assert any("from above" in k for k in found)


def test_methods_page_lists_sam_with_its_notebook_and_config():
    """The Methods page's status is computed from the repository: SAM is registered, has a notebook
    and a demo config (its results rows come when the lead regenerates docs/results.md)."""
    from workbench.pages import methods

    row = methods.catalogue().set_index("method").loc["SAM (audio)"]
    assert row["notebook"] == "notebooks/p09_sam.ipynb" and row["demo config"] == "configs/sam_echoes.yaml"
    assert "sam" in row["registered as"].split(", ") and row["status"] in ("notebook", "reproduced")


def test_compare_page_teacher_vs_student_and_run_vs_run(echo_run, monkeypatch):
    runs_dir, run_id = echo_run
    at = open_page(runs_dir, run_id, "compare", monkeypatch)
    rows = open_run(runs_dir / run_id).instances(split="test")
    scatter = next(v for k, v in charts(at).items() if "teacher vs student" in k)["data"][0]
    assert sorted(scatter["y"]) == pytest.approx(sorted(rows["student_rmse"]))
    assert sorted(scatter["x"]) == pytest.approx(sorted(rows["teacher_rmse"]))
    teacher_run = next(p.name for p in runs_dir.iterdir() if p.name != run_id)  # the cached teacher's own run
    at.radio(key="cmp_mode").set_value("Run vs run").run()
    at.selectbox(key="cmp_a").set_value(run_id).run()
    at.selectbox(key="cmp_b").set_value(teacher_run).run()
    assert not at.exception, [e.value for e in at.exception]
    pair = next(v for k, v in charts(at).items() if "run A vs run B" in k)["data"][0]
    assert sorted(pair["x"]) == pytest.approx(sorted(rows["student_rmse"]))
    assert sorted(pair["y"]) == pytest.approx(sorted(rows["teacher_rmse"]), rel=1e-5)  # B's student is the teacher


def test_attention_page_shows_the_cross_attention_of_an_echo_run(echo_run, monkeypatch):
    runs_dir, run_id = echo_run
    at = open_page(runs_dir, run_id, "attention", monkeypatch)
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    assert any("azimuth query x echo time" in k for k in charts(at))
