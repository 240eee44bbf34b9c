"""The Instances, Features and Compare pages on a harmonization run (meta `task: harmonization`),
rendered with AppTest against a real one-epoch GiftNet run of configs/giftnet_composites.yaml at a
tiny size: the test split's composite / output / real panels show the stored probe images, the
relation heatmaps the stored relation rows of the probe's foreground cells, and the Features page
the recorded relation loss per epoch."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from conftest_dashboard import REPO, charts, open_instances, open_page
from kd_engine.config import load_raw, validate
from kd_engine.store import open_run


@pytest.fixture(scope="module")
def harmonization_run(tmp_path_factory) -> tuple[Path, str]:
    from kd_engine.run import train

    base = tmp_path_factory.mktemp("runs_harmonization")
    raw = load_raw(REPO / "configs" / "giftnet_composites.yaml")
    raw.update(epochs=1, runs_dir=str(base / "runs"), cache_dir=str(base / "cache"), device="cpu")
    raw["data"]["params"].update(n_train=16, n_val=4, n_test=6, size=16)
    raw["student"]["params"]["width"] = 2
    raw["record"] = {"tensorboard": False, "attention_maps": 3, "feature_probe_size": 4}
    run_dir = train(validate(raw, "harmonization dashboard test"), distributed=False)
    return base / "runs", Path(run_dir).name


def _array(z) -> np.ndarray:
    """A trace's array as plotly serialises it: a list, or a typed buffer {dtype, bdata, shape}."""
    if isinstance(z, dict):
        return np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"]).astype(float)
    return np.asarray(z, dtype=float)


def test_test_split_shows_composite_output_real_and_relations(harmonization_run, monkeypatch):
    runs_dir, run_id = harmonization_run
    at = open_instances(runs_dir, run_id, monkeypatch)
    at.radio(key="inst_split").set_value("test").run()
    assert not at.exception, [e.value for e in at.exception]
    run = open_run(runs_dir / run_id)
    final = run.final_metrics()
    metrics = {m.label: float(m.value) for m in at.metric}
    assert metrics["student fmse"] == pytest.approx(final["test/student_fmse"], abs=1e-4)
    specs = charts(at)
    iid = at.selectbox(key="harm_image").value
    panels = specs[f"image {iid}: composite, output, real"]
    names = [a["text"] for a in panels["layout"]["annotations"]]
    assert names == ["composite", "output", "real", "mask", "error"]
    k = json.loads(run.artifacts("harmonization")["meta"].iloc[0])["instance_ids"].index(iid)
    real = run.load_artifact("harmonization/test/real")[k]
    shown = _array(panels["data"][2]["z"]).reshape(real.shape[1], real.shape[2], 3)  # 0-255 RGB
    assert shown == pytest.approx(np.round(real.transpose(1, 2, 0) * 255), abs=1)
    relations = specs[f"image {iid}: foreground–background relations"]
    mask = run.load_artifact("harmonization/test/mask")[k]
    rows = mask.reshape(4, 4, 4, 4).mean(axis=(1, 3)).ravel() > 0.5
    expected = run.load_artifact("harmonization/test/relation_real")[k][rows]
    assert np.asarray(relations["data"][0]["z"], dtype=float) == pytest.approx(expected, abs=1e-4)


def test_features_and_compare_pages_render_the_run(harmonization_run, monkeypatch):
    runs_dir, run_id = harmonization_run
    rows = open_run(runs_dir / run_id).instances("train")
    for page in ("features", "compare"):
        specs = charts(open_page(runs_dir, run_id, page, monkeypatch))
        assert any("foreground–background relations" in t for t in specs), (page, list(specs))
        if page == "features":
            curve = specs["mean relation loss L_rel (train)"]["data"][-1]["y"]
            assert curve == pytest.approx(rows.groupby("epoch")["relation"].mean().tolist())
