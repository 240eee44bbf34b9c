"""The Searches page (AppTest) on fixture searches: MCTS and random (sequential state files) and a
BOSS study (Optuna SQLite), plus the search figures."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from kd_engine.config import validate
from kd_engine.search.boss import run_boss
from kd_engine.search.read import list_searches, open_search, tree_visits
from kd_engine.search.runner import run_sequential
from workbench.figures import level_visits, search_bands, search_curves

from conftest_dashboard import REPO  # noqa: F401


def _seq(runs_dir, strategy, sid):
    cfg = validate({"name": sid, "student": {"name": "mlp"}, "runs_dir": str(runs_dir),
                    "search": {"strategy": strategy, "budget": 6, "seed": 0,
                               "space": {"optimizer.lr": [0.01, 0.1, 1.0], "epochs": [1, 2]}}})
    evaluate = lambda config, trial: {"reward": -abs(config["optimizer.lr"] - 0.1) + 0.1 * config["epochs"],  # noqa: E731
                                      "run_id": f"{sid}-run-{trial}", "wall_s": 0.1, "status": "finished",
                                      "metrics": {"val/student_acc": 0.5, "test/student_acc": 0.4}}
    run_sequential(cfg, evaluate=evaluate)


@pytest.fixture
def searches_dir(tmp_path):
    _seq(tmp_path, "mcts", "toy_mcts")
    _seq(tmp_path, "random", "toy_random")
    cfg = validate({"name": "toy_boss", "student": {"name": "mlp"}, "runs_dir": str(tmp_path),
                    "search": {"strategy": "boss", "budget": 4, "params": {"warmup": 2, "startup_trials": 2}}})
    fake = lambda trial, overrides: {"run_id": f"boss-{trial.number}", "run_dir": str(tmp_path / f"r{trial.number}"),  # noqa: E731
                                     "status": "finished", "wall_s": 0.1,
                                     "metrics": {"val/student_acc": 0.5 + 0.1 * trial.number, "val/student_loss": 1.0}}
    run_boss(cfg, evaluate=fake)
    return tmp_path


def test_read_api(searches_dir):
    table = list_searches(searches_dir)
    assert set(table["search_id"]) == {"toy_mcts", "toy_random", "toy_boss"}
    boss = open_search("toy_boss", searches_dir).trials()
    assert list(boss["trial"]) == [0, 1, 2, 3] and list(boss["kind"]) == ["warmup", "warmup", "boss", "boss"]
    assert boss["reward"].tolist() == pytest.approx([0.5, 0.6, 0.7, 0.8])
    visits = tree_visits(open_search("toy_mcts", searches_dir))
    assert visits[visits["level"] == "lr"]["visits"].sum() == 6
    assert tree_visits(open_search("toy_random", searches_dir)).empty


def test_search_figures():
    frame = pd.DataFrame({"search_id": ["a"] * 3 + ["b"] * 3, "trial": [0, 1, 2] * 2,
                          "reward": [0.1, 0.3, 0.2, 0.5, 0.4, 0.6]})
    fig = search_curves(frame)
    assert [list(t.y) for t in fig.data] == [[0.1, 0.3, 0.3], [0.5, 0.5, 0.6]]
    bands = search_bands(frame.assign(strategy="s", seed=[0, 0, 0, 1, 1, 1]))
    mean = [t for t in bands.data if t.name and "mean" in t.name][0]
    assert list(mean.y) == pytest.approx([0.3, 0.4, 0.45])
    bars = level_visits(pd.DataFrame({"level": ["t", "t"], "choice": ["x", "y"], "visits": [3, 1]}))
    assert list(bars.data[0].y) == [3, 1]


def _open(runs_dir, monkeypatch) -> AppTest:
    monkeypatch.setenv("KDW_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120).run()
    at.switch_page("workbench/pages/search.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_search_page_shows_trials_and_curves(searches_dir, monkeypatch):
    at = _open(searches_dir, monkeypatch)
    assert at.dataframe[0].value.shape[0] == 3
    figs = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
    curves = [f for f in figs if "best reward so far" in f["layout"]["title"]["text"]][0]
    assert {t["name"] for t in curves["data"]} == {"toy_mcts", "toy_random", "toy_boss"}
    at.selectbox(key="search_one").set_value("toy_mcts").run()
    assert not at.exception
    assert at.dataframe[1].value.shape[0] == 6
    figs = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
    assert any("MCTS visits" in f["layout"]["title"]["text"] for f in figs)
    at.selectbox(key="search_one").set_value("toy_boss").run()
    assert not at.exception and at.dataframe[1].value.shape[0] == 4


def test_search_page_empty(tmp_path, monkeypatch):
    at = _open(tmp_path, monkeypatch)
    assert "No searches under" in "\n".join(str(e.value) for e in at.info)


def test_dashboard_launch_of_a_search_names_it_and_leaves_pending_when_it_starts(tmp_path, monkeypatch):
    """A config with a search section launched from the dashboard becomes a search named by the
    launch id; the launch stays pending only until the search's directory exists."""
    from workbench import launcher

    def fake_spawn(command, base, run_id, kind, config):
        record = {"run_id": run_id, "pid": 0, "kind": kind, "config": config, "command": command}
        (launcher._records(base) / f"{run_id}.json").write_text(json.dumps(record))
        return record

    monkeypatch.setattr(launcher, "_spawn", fake_spawn)
    text = (REPO / "configs" / "boss_digits.yaml").read_text()
    record = launcher.launch(text, "boss_digits.yaml", base=tmp_path)
    assert record["kind"] == "search"
    written = launcher.parse_yaml((tmp_path / launcher.LAUNCH_DIR / f"{record['run_id']}.yaml").read_text())
    assert written["search"]["id"] == record["run_id"]
    assert [p["run_id"] for p in launcher.pending(tmp_path)] == [record["run_id"]]  # not started yet
    search = tmp_path / "_searches" / record["run_id"]
    search.mkdir(parents=True)
    (search / "search.json").write_text(json.dumps({"id": record["run_id"], "strategy": "boss"}))
    assert launcher.pending(tmp_path) == []
