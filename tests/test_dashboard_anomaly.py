"""The Instances page on an anomaly-detection run (meta `task: anomaly`), rendered with AppTest
against a real two-epoch MemKD run of configs/memkd_digits.yaml: training rows show the KD loss
and the memory-read entropy, the test split shows the AUROCs, the score distribution of normal
against anomalous images (one histogram per kind, counts from the recorded rows) and the anomaly
maps with the pasted squares outlined."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest_dashboard import REPO, charts, open_instances
from kd_engine.config import load_raw, validate
from kd_engine.store import open_run


@pytest.fixture(scope="module")
def anomaly_run(tmp_path_factory) -> tuple[Path, str]:
    from kd_engine.run import train

    base = tmp_path_factory.mktemp("runs_anomaly")
    raw = load_raw(REPO / "configs" / "memkd_digits.yaml")
    raw.update(epochs=2, runs_dir=str(base / "runs"), cache_dir=str(base / "cache"), device="cpu")
    raw["teacher"]["train"]["epochs"] = 1
    raw["record"] = {"tensorboard": False, "attention_maps": 0, "feature_probe_size": 8}
    run_dir = train(validate(raw, "anomaly dashboard test"), distributed=False)
    return base / "runs", Path(run_dir).name






def test_training_split_shows_loss_and_memory_entropy(anomaly_run, monkeypatch):
    runs_dir, run_id = anomaly_run
    at = open_instances(runs_dir, run_id, monkeypatch)
    assert at.radio(key="inst_split").value == "train"
    titles = list(charts(at))
    assert any(t.startswith("student_loss") for t in titles) and any(t.startswith("memory_entropy") for t in titles)
    assert not [c for c in at.get("plotly_chart") if "weights at epoch" in c.proto.spec]  # no weight views


def test_test_split_shows_aurocs_score_distribution_and_maps(anomaly_run, monkeypatch):
    runs_dir, run_id = anomaly_run
    run = open_run(runs_dir / run_id)
    rows = run.instances(split="test")
    final = run.final_metrics()
    at = open_instances(runs_dir, run_id, monkeypatch)
    at.radio(key="inst_split").set_value("test").run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["image auroc"] == f"{final['test/student_image_auroc']:.4f}"
    assert metrics["pixel auroc"] == f"{final['test/student_pixel_auroc']:.4f}"
    found = charts(at)
    histogram = next(v for k, v in found.items() if k.startswith("image score"))
    counts = {trace["name"]: len(trace["x"]) for trace in histogram["data"]}
    expected = rows["kind"].value_counts()
    assert counts == {f"normal (n={expected[0]})": expected[0], f"other digit (n={expected[1]})": expected[1],
                      f"pasted patch (n={expected[2]})": expected[2]}
    grid = next(v for k, v in found.items() if "anomaly map" in k)
    heatmaps = [t for t in grid["data"] if t["type"] == "heatmap"]
    assert len(heatmaps) == 12  # 6 images and 6 maps of the highest-scored normal images
    normal = rows[rows["kind"] == 0].sort_values("anomaly_score", ascending=False)
    top = float(normal["anomaly_score"].iloc[0])
    assert np.isclose(np.max(heatmaps[1]["z"]), top, atol=1e-3)  # the first map's maximum is its score
    assert not grid["layout"].get("shapes")  # normal images have no anomalous pixels to outline
    at.selectbox(key="anom_kind").set_value(2).run()
    grid = next(v for k, v in charts(at).items() if "anomaly map" in k)
    assert len(grid["layout"]["shapes"]) == 12  # each pasted square outlined on image and map


def test_methods_page_shows_memkd_with_its_notebook_config_and_results():
    """The Methods page's status is computed from the repository: MemKD is registered, has a
    notebook, a demo config and rows in docs/results.md."""
    from workbench.pages import methods

    row = methods.catalogue().set_index("method").loc["MemKD"]
    assert row["status"] == "reproduced" and row["notebook"] == "notebooks/p18_memkd.ipynb"
    assert row["demo config"] == "configs/memkd_digits.yaml" and "memkd" in row["registered as"].split(", ")
