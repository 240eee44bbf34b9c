"""The shipped PointDC config at a tiny size through `kd_engine.run.train`: CMD then SVC epochs
run, the per-scene rows, the matched metrics (recomputed from the recorded artifacts), the
probe-scene artifacts and the pseudo-label decisions are recorded; bad settings name their field."""
from __future__ import annotations

import numpy as np
import pytest

from kd_engine.cluster_metrics import match_clusters
from kd_engine.config import load_raw, validate
from kd_engine.errors import ConfigError

TINY = {"scenes": 3, "test_scenes": 1, "points": 128, "views": 2, "image_size": 16, "render_points": 1500,
        "supervoxels": 16}


def _config(tmp_path, **over):
    raw = load_raw("configs/pointdc_rooms.yaml")
    raw.update(epochs=3, runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"))
    raw["data"]["params"] = dict(TINY)
    raw["distill"]["params"].update(cmd_epochs=1, svc_warmup=1, svc_epochs=1, recluster_every=1, primitives=4,
                                    kmeans_iterations=5)
    raw["record"]["attention_maps"] = 1
    for key, value in over.items():
        raw[key] = value
    return validate(raw, "test")


def test_shipped_config_trains_and_records(tmp_path):
    from kd_engine.run import train
    from kd_engine.store import open_run

    run = open_run(train(_config(tmp_path), distributed=False))
    assert run.meta()["task"] == "points" and run.meta()["status"] == "finished"
    rows = run.instances(split="train")
    assert sorted(rows["epoch"].unique()) == [0, 1, 2] and len(rows) == 3 * 2
    cmd, svc = rows[rows["epoch"] == 0], rows[rows["epoch"] > 0]
    assert cmd["term_cmd"].between(0, 4).all() and cmd["weight"].between(0.3, 1).all()
    assert svc["term_svc"].notna().all() and svc["pseudo_purity"].between(0.2, 1).all()
    final = run.final_metrics()
    true, pred = run.load_artifact("points/test/true"), run.load_artifact("points/test/student_pred")
    assert true.shape == pred.shape == (1, 128) and run.load_artifact("points/test/xyz").shape == (1, 128, 3)
    # the predictions are already matched: scoring them again with the identity matching gives the metric
    assert final["test/student_oAcc"] == pytest.approx((true == pred).mean())
    assert final["test/student_mIoU"] == pytest.approx(match_clusters(true, pred, 5).miou)
    assert 0 <= final["test/teacher_mIoU"] <= 1 and 0.3 < final["test/teacher_coverage"] <= 1
    pseudo = run.load_artifact("points/pseudo_labels")
    assert pseudo.shape[0] == 2 and pseudo.max() < 4
    assert len(run.scalars(keys=["svc/pseudo_mIoU"])) == 2  # one per re-clustering (epochs 1 and 2)


def test_errors_name_the_field(tmp_path):
    from kd_engine.run import train

    with pytest.raises(ConfigError, match="data.params.test_scenes"):
        train(_config(tmp_path, data={"name": "rooms3d", "params": {**TINY, "test_scenes": 3}}), distributed=False)
    with pytest.raises(ConfigError, match="data.name: method pointdc segments point clouds"):
        train(_config(tmp_path, data={"name": "digits"}), distributed=False)
    bad = load_raw("configs/pointdc_rooms.yaml")["distill"]
    bad["params"]["temperature"] = 0
    with pytest.raises(ConfigError, match="distill.params.temperature"):
        train(_config(tmp_path, distill=bad), distributed=False)
