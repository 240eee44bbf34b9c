"""The Instances page on a BEV run (meta `task: bev`), rendered with AppTest against a real tiny
RDD run of configs/rdd_bev.yaml: training rows show the regions RDD kept, the test split shows
the centre-distance APs and a probe scene's BEV input, true/teacher/student heatmaps and the
disparity map with exactly the regions the run stored for that scene outlined."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest_dashboard import REPO, charts, open_instances
from kd_engine.config import validate
from kd_engine.experiment import set_key
from kd_engine.store import open_run
from test_rdd import SMOKE


@pytest.fixture(scope="module")
def bev_run(tmp_path_factory) -> tuple[Path, str]:
    from kd_engine.run import train

    base = tmp_path_factory.mktemp("runs_bev")
    raw = yaml.safe_load((REPO / "configs" / "rdd_bev.yaml").read_text())
    for key, value in SMOKE.items():
        set_key(raw, key, value)
    raw.update(runs_dir=str(base / "runs"), cache_dir=str(base / "cache"), device="cpu")
    raw["record"]["tensorboard"] = False
    run_dir = train(validate(raw, "bev dashboard test"), distributed=False)
    return base / "runs", Path(run_dir).name






def test_training_split_shows_the_kept_regions(bev_run, monkeypatch):
    runs_dir, run_id = bev_run
    rows = open_run(runs_dir / run_id).instances(split="train")
    at = open_instances(runs_dir, run_id, monkeypatch)
    assert any(t.startswith("disparity_selected") for t in charts(at))
    caption = " ".join(c.value for c in at.caption)
    assert f"{int(rows['selected_fg'].sum())} foreground, {int(rows['selected_bg'].sum())} background" in caption


def test_test_split_shows_ap_heatmaps_and_selected_regions(bev_run, monkeypatch):
    runs_dir, run_id = bev_run
    run = open_run(runs_dir / run_id)
    final = run.final_metrics()
    at = open_instances(runs_dir, run_id, monkeypatch)
    at.radio(key="inst_split").set_value("test").run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["student mAP"] == f"{final['test/student_mAP']:.4f}"
    assert metrics["teacher mAP"] == f"{final['test/teacher_mAP']:.4f}"
    regions = run.load_artifact("bev/test/regions")
    ids = json.loads(run.artifacts("bev_map").set_index("name").loc["bev/test/input", "meta"])["instance_ids"]
    for k in (0, 1):
        at.selectbox(key="bev_scene").set_value(ids[k]).run()
        figure = charts(at)[f"scene #{ids[k]} (test)"]
        heatmaps = [t for t in figure["data"] if t["type"] == "heatmap"]
        assert len(heatmaps) == 5  # input, true, teacher, student, disparity
        titles = [a["text"] for a in figure["layout"]["annotations"]]
        assert titles[:4] == ["BEV input (max over channels)", "true heatmap", "teacher heatmap", "student heatmap"]
        mine = regions[regions[:, 0] == k]
        shapes = figure["layout"]["shapes"]
        assert len(shapes) == len(mine) == 16
        assert sorted((s["x0"] + 1.5, s["y0"] + 1.5) for s in shapes) == sorted((c, r) for r, c in mine[:, 1:3])
        green = sum(s["line"]["color"] == "#00c853" for s in shapes)
        assert green == int(mine[:, 4].sum())
        tables = [d.value for d in at.dataframe if list(d.value.columns) == ["row", "col", "disparity", "foreground"]]
        assert len(tables) == 1 and len(tables[0]) == 16
