"""The Instances page on a generation (editing) run: a real smoke-size SDD run, rendered with
AppTest, shows the timestep indicator with its chosen t*, the per-sample timesteps and
entropies, the edits as an image grid (source | edit) and the success/identity scatter."""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest_dashboard import REPO
from kd_engine.config import load_raw, validate
from kd_engine.store import open_run


@pytest.fixture(scope="module")
def gen_run(tmp_path_factory):
    from kd_engine.run import train

    tmp = tmp_path_factory.mktemp("gen")
    raw = load_raw(REPO / "configs/sdd_digits.yaml")
    raw.update(epochs=2, eval_every=1, runs_dir=str(tmp / "runs"), cache_dir=str(tmp / "cache"), device="cpu")
    raw["distill"]["params"].update(ddpm_train_steps=30, ddpm_hidden=32, indicator_samples=8)
    run_dir = train(validate(raw, "sdd"), distributed=False)
    return tmp / "runs", open_run(run_dir)


def titled(at: AppTest, text: str) -> dict:
    found = [f for f in (json.loads(el.proto.spec) for el in at.get("plotly_chart"))
             if text in (f["layout"].get("title") or {}).get("text", "")]
    assert found, text
    return found[0]


def values(v) -> np.ndarray:
    """A trace's data array, decoded when plotly sent it as typed base64 (``bdata``)."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
    return np.asarray(v)


def test_instances_page_shows_indicator_rows_and_edit_grid(gen_run, monkeypatch):
    runs_dir, run = gen_run
    meta = run.meta()
    monkeypatch.setenv("KDW_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
    at.session_state["kdw_run"] = run.run_id
    at.run()
    at.switch_page("workbench/pages/instances.py").run()
    assert not at.exception, [e.value for e in at.exception]
    indicator = titled(at, "score-gradient entropy H(t)")
    assert indicator["data"][0]["x"] == meta["indicator_t"]
    assert indicator["data"][0]["y"] == pytest.approx(meta["indicator_entropy"])
    assert any(f"t* = argmin H = {meta['t_star']}" in a.get("text", "") for a in indicator["layout"]["annotations"])
    rows = titled(at, "entropy of each sample's score gradient")
    assert set(values(rows["data"][0]["x"]).tolist()) == {float(meta["t_star"])}  # argmin policy: one timestep for all
    edits = run.load_artifact("edits/test")
    grid = titled(at, "edits of the test split")
    heatmaps = [t for t in grid["data"] if t["type"] == "heatmap"]
    assert len(heatmaps) == 2 * min(24, len(edits))
    # the first cell is the first source image, the second its edit (rows are drawn flipped)
    assert np.allclose(np.asarray(heatmaps[0]["z"])[::-1], edits[0, 0], atol=1e-3)
    assert np.allclose(np.asarray(heatmaps[1]["z"])[::-1], edits[0, 1], atol=1e-3)
    titles = [a["text"] for a in grid["layout"]["annotations"]]
    assert titles[0].endswith("source 3") and "edit → 8" in titles[1]
    assert len(at.dataframe[0].value) > 0 and "timestep" in at.dataframe[0].value


def test_instances_page_test_split_shows_success_vs_identity(gen_run, monkeypatch):
    runs_dir, run = gen_run
    monkeypatch.setenv("KDW_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
    at.session_state["kdw_run"] = run.run_id
    at.run()
    at.switch_page("workbench/pages/instances.py").run()
    at.radio(key="inst_split").set_value("test").run()
    assert not at.exception, [e.value for e in at.exception]
    scatter = titled(at, "edit success (judge's P(target)) vs L2 distance")
    test_rows = run.instances(split="test")
    assert len(values(scatter["data"][0]["x"])) == len(test_rows)
    assert sorted(values(scatter["data"][0]["y"]).tolist()) == pytest.approx(sorted(test_rows["student_p_target"]), abs=1e-6)


@pytest.mark.parametrize("page", ["curves", "compare", "features", "runs"])
def test_other_pages_open_on_a_generation_run(gen_run, monkeypatch, page):
    runs_dir, run = gen_run
    monkeypatch.setenv("KDW_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
    at.session_state["kdw_run"] = run.run_id
    at.run()
    at.switch_page(f"workbench/pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]


def test_compare_run_vs_run_shows_both_runs_edits(gen_run, monkeypatch, tmp_path_factory):
    from kd_engine.run import train

    runs_dir, run = gen_run
    raw = load_raw(REPO / "configs/sdd_digits.yaml")
    raw.update(epochs=1, eval_every=1, runs_dir=str(runs_dir), cache_dir=str(tmp_path_factory.mktemp("c2")),
               device="cpu", name="sdd_b")
    raw["distill"]["params"].update(ddpm_train_steps=30, ddpm_hidden=32, indicator_samples=8, timestep="random")
    other = open_run(train(validate(raw, "sdd"), distributed=False))
    monkeypatch.setenv("KDW_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
    at.run()
    at.switch_page("workbench/pages/compare.py").run()
    at.radio(key="cmp_mode").set_value("Run vs run").run()
    at.selectbox(key="cmp_a").set_value(run.run_id).run()
    at.selectbox(key="cmp_b").set_value(other.run_id).run()
    at.radio(key="cmp_rr_split").set_value("test").run()
    assert not at.exception, [e.value for e in at.exception]
    scatter = titled(at, "per-instance edit success, A vs B")
    a_rows = run.instances(split="test").set_index("instance_id")["student_p_target"]
    ids = values(scatter["data"][0]["customdata"]).reshape(-1).astype(int) if isinstance(
        scatter["data"][0]["customdata"], dict) else np.asarray(scatter["data"][0]["customdata"]).reshape(-1)
    assert values(scatter["data"][0]["x"]) == pytest.approx(a_rows.loc[ids].to_numpy(), abs=1e-6)
    grid = titled(at, "test edits: source | A | B")
    heatmaps = [t for t in grid["data"] if t["type"] == "heatmap"]
    ea, eb = run.load_artifact("edits/test"), other.load_artifact("edits/test")
    assert np.allclose(np.asarray(heatmaps[1]["z"])[::-1], ea[0, 1], atol=1e-3)
    assert np.allclose(np.asarray(heatmaps[2]["z"])[::-1], eb[0, 1], atol=1e-3)
