"""The Features and Compare pages on BEV (`task: bev`) and point-cloud (`task: points`) runs,
rendered with AppTest against the tiny real RDD and PointDC runs of test_dashboard_bev /
test_dashboard_points (one of each, made once per module). Each view is checked against what the
run stored: the disparity maps and CKA scalars, the AP per class of both roles or runs, the
heatmaps of one scene, the per-point agreement of teacher and student, and the mIoU/oAcc."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest_dashboard import REPO, charts, open_page
from kd_engine.store import open_run
from test_dashboard_bev import bev_run  # noqa: F401 - module-scoped fixture: a tiny RDD run
from test_dashboard_points import points_run  # noqa: F401 - module-scoped fixture: a tiny PointDC run
from workbench.figures.points import class_colours




def run_vs_run(at: AppTest, a: str, b: str) -> AppTest:
    at.radio(key="cmp_mode").set_value("Run vs run").run()
    at.selectbox(key="cmp_a").set_value(a).run()
    at.selectbox(key="cmp_b").set_value(b).run()
    assert not at.exception, [e.value for e in at.exception]
    return at




def z_of(trace: dict) -> np.ndarray:
    return np.asarray(trace["z"], dtype=float)


def bev_probe(run, name: str) -> tuple[list[int], np.ndarray]:
    ids = json.loads(run.artifacts("bev_map").set_index("name").loc["bev/test/input", "meta"])["instance_ids"]
    return ids, run.load_artifact(f"bev/test/{name}")


# -- BEV -----------------------------------------------------------------------------------------
def test_bev_features_shows_disparity_maps_and_scalars(bev_run, monkeypatch):
    runs_dir, run_id = bev_run
    run = open_run(runs_dir / run_id)
    at = open_page(runs_dir, run_id, "features", monkeypatch)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["test/disparity"] == f"{run.final_metrics()['test/disparity']:.4g}"
    cka = run.features().query("metric == 'cka'").iloc[-1]
    assert metrics[f"cka neck (epoch {int(cka['epoch'])})"] == f"{cka['value']:.4g}"
    ids, feature = bev_probe(run, "feature_disparity")
    _, heat = bev_probe(run, "heatmap_disparity")
    at.selectbox(key="bev_feat_scene").set_value(ids[1]).run()
    figure = charts(at)[f"scene #{ids[1]} (test): input and teacher–student disparity"]
    maps = [t for t in figure["data"] if t["type"] == "heatmap"][-2:]  # after one panel per input channel
    np.testing.assert_allclose(z_of(maps[0]), feature[1], rtol=1e-6)
    np.testing.assert_allclose(z_of(maps[1]), heat[1], rtol=1e-6)
    summary = next(d.value for d in at.dataframe if "meaning" in d.value.columns).set_index("map")
    assert summary.loc["feature_disparity", "mean"] == pytest.approx(float(feature[1].mean()), rel=1e-6)


def test_bev_compare_teacher_vs_student(bev_run, monkeypatch):
    runs_dir, run_id = bev_run
    run = open_run(runs_dir / run_id)
    final = run.final_metrics()
    at = open_page(runs_dir, run_id, "compare", monkeypatch)
    table = next(d.value for d in at.dataframe if "class" in d.value.columns).set_index("class")
    assert list(table.columns) == ["teacher", "student"]
    assert list(table.index) == ["mAP", "car", "pedestrian", "cyclist"]
    for role in ("teacher", "student"):
        assert table.loc["mAP", role] == pytest.approx(final[f"test/{role}_mAP"])
        assert table.loc["cyclist", role] == pytest.approx(final[f"test/{role}_AP_cyclist"])
    ids, teacher = bev_probe(run, "teacher_heatmap")
    _, student = bev_probe(run, "student_heatmap")
    at.selectbox(key="bev_cmp_scene").set_value(ids[1]).run()
    figure = charts(at)[f"scene #{ids[1]} (test): teacher and student heatmaps"]
    titles = [a["text"] for a in figure["layout"]["annotations"]]
    assert titles[2:4] == ["teacher heatmap", "student heatmap"]
    heatmaps = [t for t in figure["data"] if t["type"] == "heatmap"]
    np.testing.assert_allclose(z_of(heatmaps[2]), teacher[1].max(0), rtol=1e-6)
    np.testing.assert_allclose(z_of(heatmaps[3]), student[1].max(0), rtol=1e-6)


def test_bev_compare_run_vs_run(bev_run, monkeypatch):
    """The RDD run against its teacher's own run (also a BEV run, whose "student" is the teacher)."""
    runs_dir, run_id = bev_run
    teacher_id = next(p.name for p in runs_dir.iterdir() if p.name != run_id and "teacher" in p.name)
    fa, fb = open_run(runs_dir / run_id).final_metrics(), open_run(runs_dir / teacher_id).final_metrics()
    at = run_vs_run(open_page(runs_dir, run_id, "compare", monkeypatch), run_id, teacher_id)
    table = next(d.value for d in at.dataframe if "class" in d.value.columns).set_index("class")
    assert table.loc["car", "A"] == pytest.approx(fa["test/student_AP_car"])
    assert table.loc["car", "B"] == pytest.approx(fb["test/student_AP_car"])
    assert table.loc["mAP", "B"] == pytest.approx(fa["test/teacher_mAP"])  # the same teacher, read both ways
    assert any("no test probe scene in common" in i.value for i in at.info)  # the teacher run saved none
    at = run_vs_run(at, run_id, run_id)  # the same run on both sides: its heatmaps, twice
    ids, student = bev_probe(open_run(runs_dir / run_id), "student_heatmap")
    figure = charts(at)[f"scene #{ids[0]} (test): run A's and run B's student heatmaps"]
    titles = [a["text"] for a in figure["layout"]["annotations"]]
    assert titles[1:] == ["true heatmap", "A student heatmap", "B student heatmap"]
    heatmaps = [t for t in figure["data"] if t["type"] == "heatmap"]
    for trace in heatmaps[2:]:
        np.testing.assert_allclose(z_of(trace), student[0].max(0), rtol=1e-6)


# -- Points --------------------------------------------------------------------------------------
def test_points_features_shows_per_point_agreement_and_confusions(points_run, monkeypatch):
    runs_dir, run_id = points_run
    run = open_run(runs_dir / run_id)
    teacher, student = run.load_artifact("points/test/teacher_pred")[0], run.load_artifact("points/test/student_pred")[0]
    both = (teacher >= 0) & (student >= 0)
    expected = np.where(both, (teacher != student).astype(int), -1)  # 1 = disagree, -1 = unlabelled (grey)
    at = open_page(runs_dir, run_id, "features", monkeypatch)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["points where teacher and student disagree"] == f"{float((teacher != student)[both].mean()):.4f}"
    found = charts(at)
    scatter = next(v for k, v in found.items() if k.endswith("agree / disagree per point"))
    assert [t["type"] for t in scatter["data"]] == ["scatter3d"]
    assert scatter["data"][0]["marker"]["color"] == class_colours(expected, 2)
    assert scatter["data"][0]["text"] == [["agree", "disagree"][v] if v >= 0 else "none" for v in expected]
    confusion = found["student: matched confusion (test)"]["data"][0]
    stored = run.load_artifact("points/test/student_confusion").astype(float)
    np.testing.assert_allclose(np.asarray(confusion["z"]), stored / np.maximum(stored.sum(1, keepdims=True), 1))
    assert "teacher: matched confusion (test)" in found


def test_points_compare_teacher_vs_student_and_run_vs_run(points_run, monkeypatch, tmp_path):
    """Run vs run needs two runs: the tiny PointDC run and a byte copy of it under another id (the
    store names a run by its directory), so B's values are known to equal A's."""
    source, run_id = points_run
    runs_dir = tmp_path / "runs"
    for name in (run_id, f"{run_id}-copy"):
        shutil.copytree(source / run_id, runs_dir / name)
    run = open_run(runs_dir / run_id)
    final = run.final_metrics()
    at = open_page(runs_dir, run_id, "compare", monkeypatch)
    metrics = {m.label: m.value for m in at.metric}
    for role in ("teacher", "student"):
        assert metrics[f"{role} mIoU"] == f"{final[f'test/{role}_mIoU']:.4f}"
        assert metrics[f"{role} oAcc"] == f"{final[f'test/{role}_oAcc']:.4f}"
    scatter = next(v for k, v in charts(at).items() if k.endswith("teacher and student (matched clusters)"))
    traces = {t["name"]: t for t in scatter["data"]}
    assert list(traces) == ["teacher prediction", "student prediction"]
    for role in ("teacher", "student"):
        labels = run.load_artifact(f"points/test/{role}_pred")[0]
        assert traces[f"{role} prediction"]["marker"]["color"] == class_colours(labels, 5)
    at = run_vs_run(at, run_id, f"{run_id}-copy")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["A student mIoU"] == metrics["B student mIoU"] == f"{final['test/student_mIoU']:.4f}"
    assert metrics["B student oAcc"] == f"{final['test/student_oAcc']:.4f}"
    found = charts(at)
    labels = run.load_artifact("points/test/student_pred")[0]
    for side in ("A", "B"):
        trace = next(v for k, v in found.items() if k.startswith(f"{side}: scene #"))["data"][0]
        assert trace["name"] == f"{side} student" and trace["marker"]["color"] == class_colours(labels, 5)
    assert any("agree on 100.0%" in c.value for c in at.caption)
