"""The Instances page on a tiny real DistillBEV run (configs/distillbev_bev.yaml): the test split's
probe scene shows each input channel (LiDAR occupancy and height, camera smear) and the method's
foreground mask, scale mask (log10), teacher attention and false-positive regions, with exactly
the values the run stored for that scene; training scenes show the foreground-cell counts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest_dashboard import REPO
from kd_engine.config import validate
from kd_engine.experiment import set_key
from kd_engine.store import open_run
from conftest_dashboard import charts, open_instances
from test_distillbev import SMOKE


@pytest.fixture(scope="module")
def distillbev_run(tmp_path_factory) -> tuple[Path, str]:
    from kd_engine.run import train

    base = tmp_path_factory.mktemp("runs_distillbev")
    raw = yaml.safe_load((REPO / "configs" / "distillbev_bev.yaml").read_text())
    for key, value in SMOKE.items():
        set_key(raw, key, value)
    raw.update(runs_dir=str(base / "runs"), cache_dir=str(base / "cache"), device="cpu")
    raw["record"]["tensorboard"] = False
    return base / "runs", Path(train(validate(raw, "distillbev dashboard test"), distributed=False)).name


def test_probe_scene_shows_inputs_masks_and_attention(distillbev_run, monkeypatch):
    runs_dir, run_id = distillbev_run
    run = open_run(runs_dir / run_id)
    at = open_instances(runs_dir, run_id, monkeypatch)
    assert any(t.startswith("fg_cells") for t in charts(at))  # training scenes: foreground-cell counts
    at.radio(key="inst_split").set_value("test").run()
    assert not at.exception, [e.value for e in at.exception]
    ids = json.loads(run.artifacts("bev_map").set_index("name").loc["bev/test/input", "meta"])["instance_ids"]
    at.selectbox(key="bev_scene").set_value(ids[1]).run()
    figure = charts(at)[f"scene #{ids[1]}: inputs and the method's per-cell maps"]
    titles = [a["text"] for a in figure["layout"]["annotations"]]
    assert titles == ["input: lidar:occupancy", "input: lidar:height", "input: camera:smear", "scale (log10)",
                      "foreground", "attention", "false positive"]
    panels = {t: np.asarray(d["z"], float) for t, d in zip(titles, figure["data"])}
    assert np.allclose(panels["foreground"], run.load_artifact("bev/test/foreground")[1])
    assert np.allclose(panels["attention"], run.load_artifact("bev/test/attention")[1], atol=1e-6)
    assert np.allclose(panels["scale (log10)"], np.log10(run.load_artifact("bev/test/scale")[1]), atol=1e-5)
    assert np.allclose(panels["input: camera:smear"], run.load_artifact("bev/test/input")[1, 2], atol=1e-6)
