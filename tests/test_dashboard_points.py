"""The Instances page on a point-cloud run (meta `task: points`), rendered with AppTest against a
real tiny PointDC run of configs/pointdc_rooms.yaml: training rows show the per-scene losses and
the share of points with a 2-D feature; the test split shows the matched metrics and a probe
scene as 3-D scatters coloured by truth, teacher and student (colours checked point by point
against the recorded artifacts), the top-down view and the matched confusion matrix."""
from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from conftest_dashboard import REPO, charts, open_instances
from kd_engine.config import load_raw, validate
from kd_engine.store import open_run
from workbench.figures.points import class_colours

TINY = {"scenes": 3, "test_scenes": 1, "points": 96, "views": 2, "image_size": 16, "render_points": 1200,
        "supervoxels": 12}


@pytest.fixture(scope="module")
def points_run(tmp_path_factory) -> tuple[Path, str]:
    from kd_engine.run import train

    base = tmp_path_factory.mktemp("runs_points")
    raw = load_raw(REPO / "configs" / "pointdc_rooms.yaml")
    raw.update(epochs=2, runs_dir=str(base / "runs"), cache_dir=str(base / "cache"), device="cpu")
    raw["data"]["params"] = dict(TINY)
    raw["distill"]["params"].update(cmd_epochs=1, svc_warmup=1, svc_epochs=0, primitives=4, kmeans_iterations=5)
    raw["record"] = {"tensorboard": False, "attention_maps": 1}
    run_dir = train(validate(raw, "points dashboard test"), distributed=False)
    return base / "runs", Path(run_dir).name






def test_training_split_shows_per_scene_values(points_run, monkeypatch):
    at = open_instances(*points_run, monkeypatch)
    assert at.radio(key="inst_split").value == "train"
    titles = list(charts(at))
    assert any(t.startswith("student_loss") for t in titles) and any(t.startswith("term_svc") for t in titles)


def test_test_split_shows_scene_coloured_by_truth_teacher_and_student(points_run, monkeypatch):
    runs_dir, run_id = points_run
    run = open_run(runs_dir / run_id)
    final = run.final_metrics()
    at = open_instances(runs_dir, run_id, monkeypatch)
    at.radio(key="inst_split").set_value("test").run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["student mIoU"] == f"{final['test/student_mIoU']:.4f}"
    assert metrics["teacher oAcc"] == f"{final['test/teacher_oAcc']:.4f}"
    found = charts(at)
    scatter = next(v for k, v in found.items() if k.startswith("scene #") and "truth" in k)
    traces = {t["name"]: t for t in scatter["data"]}
    assert [t["type"] for t in scatter["data"]] == ["scatter3d"] * 3
    assert list(traces) == ["truth", "teacher prediction", "student prediction"]
    for name, artifact in (("truth", "true"), ("teacher prediction", "teacher_pred"), ("student prediction", "student_pred")):
        labels = run.load_artifact(f"points/test/{artifact}")[0]
        assert traces[name]["marker"]["color"] == class_colours(labels, 5)
    x = traces["truth"]["x"]  # plotly may ship a numeric array as base64 bytes
    x = np.frombuffer(base64.b64decode(x["bdata"]), dtype=x["dtype"]) if isinstance(x, dict) else np.asarray(x)
    np.testing.assert_allclose(x, run.load_artifact("points/test/xyz")[0][:, 0], rtol=1e-6)
    assert any(k.endswith("from above") for k in found)
    assert any(k.startswith("student: matched confusion") for k in found)
