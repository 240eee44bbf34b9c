"""The detection Instances page on a real (tiny) UniKD run with a Faster R-CNN teacher and an
FCOS student, rendered with AppTest: the per-image set loss, the Hungarian matches per query and
the query attention maps (teacher side after stage 1, student side at the end) are shown
instead of the weight views (the run has no weights)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest_dashboard import REPO, open_page
from kd_engine.config import load_raw, validate
from kd_engine.store import open_run


@pytest.fixture(scope="module")
def unikd_run(tmp_path_factory) -> tuple[Path, str]:
    from kd_engine.run import train

    base = tmp_path_factory.mktemp("runs_unikd")
    raw = load_raw(REPO / "configs" / "unikd_fcos.yaml")
    raw.update(epochs=1, runs_dir=str(base / "runs"), cache_dir=str(base / "cache"), device="cpu", threads=1)
    raw["data"]["params"].update(n_train=8, n_val=0, n_test=2, image_size=48)
    raw["teacher"].update(name="fasterrcnn", params={"width": 4, "depth": 1, "fpn_channels": 32})
    raw["teacher"]["train"]["epochs"] = 1
    raw["student"]["params"].update(width=4)
    raw["distill"]["params"].update(pretrain_epochs=2, min_score=0.0, probe_images=2)
    raw["record"] = {"tensorboard": False, "attention_maps": 0, "feature_probe_size": 4}
    run_dir = train(validate(raw, "unikd dashboard test"), distributed=False)
    return base / "runs", Path(run_dir).name


def test_instances_page_shows_set_losses_matches_and_attention(unikd_run, monkeypatch):
    runs_dir, run_id = unikd_run
    run = open_run(runs_dir / run_id)
    assert set(run.artifacts("query_attention")["role"]) == {"teacher", "student"}
    at = open_page(runs_dir, run_id, "instances", monkeypatch)
    titles = [(json.loads(c.proto.spec)["layout"].get("title") or {}).get("text", "") for c in at.get("plotly_chart")]
    assert any(t.startswith("UniKD set loss per image") for t in titles)
    assert any("teacher boxes matched to each query" in t for t in titles)
    attention = [t for t in titles if "each query's attention" in t]
    assert attention and "teacher maps" in attention[0]
    at.radio(key="q_role").set_value("student").run()
    assert not at.exception, [e.value for e in at.exception]
    titles = [(json.loads(c.proto.spec)["layout"].get("title") or {}).get("text", "") for c in at.get("plotly_chart")]
    assert any("student maps" in t for t in titles)
    rows = run.instances(split="train")
    boxes = rows[rows["query"] >= 0]
    assert len(boxes) and np.all((boxes["query"] >= 0) & (boxes["query"] < 8))
