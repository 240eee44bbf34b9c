"""The dashboard on class-incremental WCBC runs (meta `task: incremental`), rendered with AppTest
against real one-epoch runs of configs/wcbc_cells.yaml at a tiny size. Instances: the training
split shows the class assignment by kind of cell (counts from the recorded rows), the ω
histograms and one mosaic with every cell's decision; the test split shows the old/new/harmonic
accuracies and the teacher and student class distance matrices. Features: the distance matrices
and their correlations. Compare, run against run (wcbc against fine-tuning): objects matched on
(image, cell)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest_dashboard import REPO, open_instances, open_page
from kd_engine.config import load_raw, validate
from kd_engine.store import open_run


@pytest.fixture(scope="module")
def wcbc_run(tmp_path_factory) -> tuple[Path, str]:
    from kd_engine.run import train

    base = tmp_path_factory.mktemp("runs_incremental")
    raw = load_raw(REPO / "configs" / "wcbc_cells.yaml")
    raw.update(epochs=1, runs_dir=str(base / "runs"), cache_dir=str(base / "cache"), device="cpu")
    raw["teacher"]["train"]["epochs"] = 1
    for data in (raw["data"], raw["teacher"]["data"]):
        data["params"].update(n_per_task=48, n_val=8, n_test=24)
    raw["distill"]["params"]["threshold"] = 0.0  # an untrained teacher: let it assign every unlabelled cell
    raw["record"] = {"tensorboard": False, "attention_maps": 0, "feature_probe_size": 8}
    run_dir = train(validate(raw, "incremental dashboard test"), distributed=False)
    raw.update(name="wcbc_finetune")
    raw["distill"]["params"].update(between=0.0, within=0.0)
    train(validate(raw, "incremental dashboard test, fine-tuning"), distributed=False)
    return base / "runs", Path(run_dir).name




def titles(at: AppTest) -> list[str]:
    return [(json.loads(c.proto.spec)["layout"].get("title") or {}).get("text", "") for c in at.get("plotly_chart")]


def test_training_split_shows_assignments_omega_and_one_mosaic(wcbc_run, monkeypatch):
    runs_dir, run_id = wcbc_run
    at = open_instances(runs_dir, run_id, monkeypatch)
    assert at.radio(key="inst_split").value == "train"
    rows = open_run(runs_dir / run_id).instances(split="train")
    table = next(d.value for d in at.dataframe if "cell holds" in d.value.columns).set_index("cell holds")
    assert int(table.to_numpy().sum()) == len(rows)
    assert int(table.loc["new digit", "label"]) == int((rows["digit"] >= 5).sum())  # every new digit is labelled
    shown = titles(at)
    assert any(t.startswith("ω of teacher-assigned cells") for t in shown)
    mosaic = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if "what was decided per cell" in c.proto.spec]
    assert mosaic and len(mosaic[0]["layout"]["annotations"]) == 4
    assert any("ω" in a["text"] for a in mosaic[0]["layout"]["annotations"])


def test_test_split_shows_accuracies_and_distance_matrices(wcbc_run, monkeypatch):
    runs_dir, run_id = wcbc_run
    at = open_instances(runs_dir, run_id, monkeypatch)
    at.radio(key="inst_split").set_value("test").run()
    assert not at.exception, [e.value for e in at.exception]
    labels = [m.label for m in at.metric]
    assert {"old acc", "new acc", "harmonic", "df corr"} <= set(labels)
    final = open_run(runs_dir / run_id).final_metrics()
    assert at.metric[labels.index("old acc")].value == f"{final['test/student_old_acc']:.3f}"
    spec = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if "class means (D_f)" in c.proto.spec][0]
    assert len(spec["data"]) == 2 and [a["text"] for a in spec["layout"]["annotations"]][:2] == ["teacher", "student"]


def test_features_and_compare_pages_show_class_structure_and_match_objects(wcbc_run, monkeypatch):
    runs_dir, run_id = wcbc_run
    at = open_page(runs_dir, run_id, "features", monkeypatch)
    final = open_run(runs_dir / run_id).final_metrics()
    assert at.metric[0].value == f"{final['test/student_df_corr']:.3f}"
    assert any("class means (D_f)" in t for t in titles(at))
    other = next(p.name for p in runs_dir.iterdir() if "wcbc_finetune" in p.name)
    at.switch_page("workbench/pages/compare.py").run()
    at.radio(key="cmp_mode").set_value("Run vs run").run()
    at.selectbox(key="cmp_a").set_value(run_id).run()
    at.selectbox(key="cmp_b").set_value(other).run()
    at.radio(key="cmp_rr_split").set_value("test").run()
    assert not at.exception, [e.value for e in at.exception]
    a_rows, b_rows = (open_run(runs_dir / r).instances(split="test") for r in (run_id, other))
    merged = a_rows.merge(b_rows, on=["instance_id", "cell"], suffixes=("_a", "_b"))
    assert len(merged) == len(a_rows) == 24 * 4  # one row per object, never a cross product of cells
    differ = next(d.value for d in at.dataframe if "student_pred_a" in d.value.columns)
    assert len(differ) == int((merged["student_pred_a"] != merged["student_pred_b"]).sum())
