"""Searches (Auto-KD, paper 3; BOSS, paper 23): MCTS known answers, random search, resume, a shared
Optuna study, the BOSS pool, config errors, and an end-to-end search whose trials are runs."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kd_engine.config import load_config, validate
from kd_engine.errors import ConfigError
from kd_engine.search import run_search
from kd_engine.search.base import Space
from kd_engine.search.boss import select_pool
from kd_engine.search.read import list_searches, open_search
from kd_engine.search.runner import run_sequential
from kd_engine.search.sequential import MCTS, Node, RandomSearch, backpropagate, uct_scores, uct_select

REPO = Path(__file__).resolve().parent.parent


def _tree() -> Node:
    """root N=10; children Q = 0.6 (N=5), 0.8 (N=3), 0.1 (N=1)."""
    return Node(10, 4.0, {0: Node(5, 3.0), 1: Node(3, 2.4), 2: Node(1, 0.1)})


def test_uct_scores_match_hand_computation_and_c_changes_the_choice():
    root, ln10 = _tree(), math.log(10)
    scores = uct_scores(root, c=1.0)
    assert scores[0] == pytest.approx(0.6 + math.sqrt(ln10 / 5))
    assert scores[1] == pytest.approx(0.8 + math.sqrt(ln10 / 3))  # 1.676
    assert scores[2] == pytest.approx(0.1 + math.sqrt(ln10 / 1))  # 1.617
    assert uct_select(root, c=1.0) == 1
    assert uct_select(root, c=2.0) == 2  # more exploration: the least-visited child wins (3.13 > 2.55)
    assert uct_select(root, c=0.0) == 1  # pure exploitation: the best mean


def test_uct_unvisited_child_first_and_min_max_scaling():
    root = _tree()
    root.children[3] = Node()
    assert uct_scores(root, 1.0)[3] == math.inf and uct_select(root, 1.0) == 3
    # rewards in other units: scaled by (q - lo) / (hi - lo) inside UCT, so the choice is unchanged
    scaled = Node(10, 0.0, {i: Node(c.N, 100 * c.W - 50 * c.N) for i, c in _tree().children.items()})
    assert uct_select(scaled, 1.0, lo=-40.0, hi=30.0) == 1
    assert uct_scores(scaled, 0.0, lo=-40.0, hi=30.0)[1] == pytest.approx((30 - -40) / 70)


def test_backpropagate_updates_visits_and_values_along_the_tree_path_only():
    root = Node(2, 1.0, {0: Node(1, 0.5, {1: Node(1, 0.5)}), 1: Node(1, 0.5)})
    assert backpropagate(root, [0, 1, 2], 0.25) == 3  # root, 0, 0/1; 0/1/2 is a rollout node
    assert (root.N, root.W) == (3, 1.25)
    assert (root.children[0].N, root.children[0].W) == (2, 0.75)
    assert (root.children[0].children[1].N, root.children[0].children[1].W) == (2, 0.75)
    assert (root.children[1].N, root.children[1].W) == (1, 0.5)  # another branch: untouched
    assert 2 not in root.children[0].children[1].children


def test_node_round_trips_through_json():
    root = _tree()
    root.children[1].children[2] = Node(1, 0.3)
    assert Node.from_dict(root.to_dict()).to_dict() == root.to_dict()


SPACE = Space.from_config({"a": [0, 1, 2], "b": [0, 1, 2], "c": [0, 1]})


def _reward(config):  # best at a=2, b=1, c=1
    return -((config["a"] - 2) ** 2) - (config["b"] - 1) ** 2 - 0.5 * (config["c"] - 1) ** 2


@pytest.mark.parametrize("cls", [MCTS, RandomSearch])
def test_strategies_never_repeat_and_exhaust_the_space_exactly(cls):
    strategy = cls(SPACE, {}, seed=3)
    seen = []
    for _ in range(SPACE.size):
        path = strategy.propose()
        assert len(path) == 3 and all(0 <= i < n for i, n in zip(path, (3, 3, 2)))
        seen.append(path)
        strategy.observe(path, _reward(SPACE.config(path)))
    assert len(set(seen)) == SPACE.size
    with pytest.raises(ConfigError, match="every configuration"):
        strategy.propose()
    if cls is MCTS:
        assert strategy.root.N == SPACE.size
        assert sum(c.N for c in strategy.root.children.values()) == SPACE.size


def _cfg(tmp_path, strategy="mcts", budget=10, **search):
    raw = {"name": "toy", "student": {"name": "mlp"}, "runs_dir": str(tmp_path),
           "search": {"strategy": strategy, "budget": budget, "seed": 1,
                      "space": {"optimizer.lr": [0.01, 0.03, 0.1], "optimizer.momentum": [0.0, 0.5, 0.9],
                                "epochs": [1, 2]}, **search}}
    return validate(raw)


def _fake_evaluate(calls):
    def evaluate(config, trial):
        calls.append(trial)
        return {"reward": -abs(config["optimizer.lr"] - 0.03) - abs(config["optimizer.momentum"] - 0.5)
                + 0.01 * config["epochs"], "run_id": f"fake-{trial}", "wall_s": 0.0, "status": "finished",
                "metrics": {}}
    return evaluate


def test_random_search_respects_budget_and_space(tmp_path):
    cfg = _cfg(tmp_path, "random", budget=7)
    root = run_sequential(cfg, evaluate=_fake_evaluate([]))
    trials = open_search(root).trials()
    assert len(trials) == 7 and list(trials["trial"]) == list(range(7))
    assert set(trials["lr"]) <= {0.01, 0.03, 0.1} and set(trials["momentum"]) <= {0.0, 0.5, 0.9}
    assert not trials[["lr", "momentum", "epochs"]].duplicated().any()
    assert trials["best_so_far"].is_monotonic_increasing
    assert run_sequential(cfg, evaluate=_fake_evaluate(calls := [])) == root and calls == []  # budget spent


@pytest.mark.parametrize("strategy", ["mcts", "random"])
def test_interrupted_search_resumes_to_the_same_evaluations(tmp_path, strategy):
    whole = run_sequential(_cfg(tmp_path / "a", strategy, 12), evaluate=_fake_evaluate(calls_a := []))
    cfg_b = _cfg(tmp_path / "b", strategy, 12)
    run_sequential(cfg_b, max_evals=5, evaluate=_fake_evaluate(calls_b := []))
    assert len(open_search(cfg_b.runs_dir + "/_searches/toy").trials()) == 5
    resumed = run_sequential(cfg_b, evaluate=_fake_evaluate(calls_b))
    assert calls_a == calls_b == list(range(12))  # none lost, none repeated
    a, b = open_search(whole).state(), open_search(resumed).state()
    assert [e["config"] for e in a["evaluations"]] == [e["config"] for e in b["evaluations"]]
    assert [e["reward"] for e in a["evaluations"]] == [e["reward"] for e in b["evaluations"]]
    assert a["strategy_state"] == b["strategy_state"]  # the same tree (visit counts, values) and generator


def test_resume_refuses_another_space_in_the_same_directory(tmp_path):
    run_sequential(_cfg(tmp_path, "mcts", 3), evaluate=_fake_evaluate([]))
    other = _cfg(tmp_path, "random", 3)
    with pytest.raises(ConfigError, match="another search"):
        run_sequential(other, evaluate=_fake_evaluate([]))


def test_boss_pool_is_the_best_k_by_validation_accuracy():
    trials = [{"trial": 0, "val_acc": 0.90, "val_loss": 0.3, "test_acc": 0.99, "checkpoint": "c0"},
              {"trial": 1, "val_acc": 0.95, "val_loss": 0.2, "test_acc": 0.10, "checkpoint": "c1"},
              {"trial": 2, "val_acc": 0.97, "val_loss": 0.1, "test_acc": 0.50, "checkpoint": None},  # diverged
              {"trial": 3, "val_acc": 0.95, "val_loss": 0.1, "test_acc": 0.20, "checkpoint": "c3"},
              {"trial": 4, "val_acc": 0.80, "val_loss": 0.5, "test_acc": 1.00, "checkpoint": "c4"}]
    assert [t["trial"] for t in select_pool(trials, 2)] == [3, 1]  # tie on val_acc: lower val_loss first
    assert [t["trial"] for t in select_pool(trials, 3)] == [3, 1, 0]  # test accuracy is never used
    assert select_pool([], 4) == []


@pytest.mark.parametrize("override, match", [
    ("search.budgett=3", "unknown key 'search.budgett'"),
    ("search.budget=0", "search.budget"),
    ("search.strategy=annealing", "unknown search strategy 'annealing'"),
    ("search.params.cc=2", "unknown parameter 'cc' for strategy mcts"),
    ("search.params.c=-1x", "search.params.c: must be a number"),
    ("search.params.reward=test_acc", "search.params.reward: 'test_acc' is not one of"),
    ("search.space={nope.x: [1]}", "search.space.nope.x"),
])
def test_search_config_errors_are_one_line(tmp_path, override, match):
    with pytest.raises(ConfigError, match=match) as info:
        cfg = load_config(REPO / "configs/autokd_digits.yaml", [override, f"runs_dir={tmp_path}"])
        run_search(cfg)
    assert "\n" not in str(info.value)


def test_boss_config_errors(tmp_path):
    for override, match in (("search.params.pool_k=0", "search.params.pool_k: must be an integer >= 1"),
                            ("search.params.poolk=2", "unknown parameter 'poolk' for strategy boss"),
                            ("search.space={lr: [1]}", "search.space: strategy boss has the paper's fixed space")):
        with pytest.raises(ConfigError, match=match):
            run_search(load_config(REPO / "configs/boss_digits.yaml", [override, f"runs_dir={tmp_path}"]))


def _kdw(*args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "kd_engine.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_workers_share_one_sqlite_study(tmp_path):
    args = ["search", "configs/boss_digits.yaml", "--runs-dir", str(tmp_path), "--max-evals", "3",
            "--set", "epochs=1", "--set", "search.params.warmup=2", "--set", "search.params.startup_trials=2"]
    workers = [_kdw(*args) for _ in range(2)]
    outs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[1][-500:] for o in outs]
    trials = open_search("boss_digits", tmp_path).trials()
    assert len(trials) == 6 and sorted(trials["trial"]) == list(range(6))  # 3 + 3, no duplicated numbers
    assert trials["run_id"].nunique() == 6
    assert set(trials["kind"]) <= {"warmup", "boss"} and (trials["kind"] == "boss").any()
    boss = trials[trials["kind"] == "boss"]
    assert boss["alpha"].between(0, 1).all() and boss["teacher_trial"].notna().all()


def test_autokd_search_trials_are_tagged_runs_reading_the_teacher_features(tmp_path):
    from kd_engine.cli import main
    from kd_engine.store import list_runs, open_run

    args = [str(REPO / "configs/autokd_digits.yaml"), "--runs-dir", str(tmp_path), "--set", "search.budget=2",
            "--set", "epochs=1", "--set", "teacher.train.epochs=1", "--set", f"cache_dir={tmp_path / 'cache'}"]
    assert main(["search", *args, "--max-evals", "1"]) == 0  # interrupted after one evaluation ...
    assert len(open_search("autokd_digits", tmp_path).trials()) == 1
    assert main(["train", *args]) == 0  # ... and resumed by `kdw train` of the same config
    search = open_search("autokd_digits", tmp_path)
    trials = search.trials()
    assert len(trials) == 2 and trials["reward"].notna().all() and trials["run_id"].nunique() == 2
    assert list(trials["trial"]) == [0, 1]
    # our reconstructed Auto-KD reward, from validation quantities only: -(L_val + 1 * (1 - CKA(F_S, F_T)))
    assert trials["val_cka"].between(0, 1).all()
    assert trials["reward"].tolist() == pytest.approx((-(trials["val_loss"] + 1.0 - trials["val_cka"])).tolist())
    runs = list_runs(tmp_path).set_index("run_id")
    for row in trials.itertuples():
        run = open_run(tmp_path / row.run_id)
        cfg = run.config()
        assert cfg["tags"] == {"search_id": "autokd_digits", "trial": row.trial, "strategy": "mcts"}
        assert cfg["teacher"] is None and cfg["distill"]["params"]["teacher_features"].endswith("teacher_features")
        assert cfg.get("search") is None and runs.loc[row.run_id, "status"] == "finished"
    summary = list_searches(tmp_path).iloc[0]
    assert summary["evaluations"] == 2 and summary["best_reward"] == pytest.approx(trials["reward"].max())
    state = search.state()
    assert state["strategy_state"]["tree"]["N"] == 2


def test_validation_cka_is_one_for_the_teacher_itself_and_lower_for_another_net(tmp_path):
    """Known answer for the CKA reward term: a 'student' that is the teacher's architecture with
    the teacher's weights has CKA 1 with the cached teacher features; a fresh init does not."""
    import numpy as np
    import torch

    from kd_engine.data import build_data
    from kd_engine.models import build_model, feature_taps
    from kd_engine.search.runner import validation_cka
    from kd_engine.trainers.checkpoint import save_weights

    raw = {"name": "cka", "seed": 0, "method": "autokd", "data": {"name": "digits", "split_seed": 0},
           "student": {"name": "resnet", "params": {"width": 8, "depth": 1}},
           "distill": {"params": {"student_layer": "layer2", "teacher_layer": "layer2"}}}
    cfg = validate(raw)
    data = build_data(cfg.data, cfg.seed)
    torch.manual_seed(1)
    teacher = build_model(cfg.student, data.input_shape, data.num_classes).eval()
    with torch.no_grad(), feature_taps(teacher, ["layer2"]) as taps:
        teacher(data.val.x.float())
    cache = tmp_path / "teacher_features"
    cache.mkdir()
    np.save(cache / "val_features.npy", taps["layer2"].numpy())
    np.save(cache / "val_ids.npy", data.val.ids.numpy())
    for name, model in (("same", teacher), ("other", build_model(cfg.student, data.input_shape, data.num_classes))):
        save_weights(model, tmp_path / name / "checkpoints" / "student.safetensors", {})
    assert validation_cka(cfg, tmp_path / "same", cache) == pytest.approx(1.0, abs=1e-9)
    assert validation_cka(cfg, tmp_path / "other", cache) < 0.99
    np.save(cache / "val_ids.npy", data.val.ids.numpy()[::-1])
    with pytest.raises(ConfigError, match="val_ids.npy: the teacher features file holds another validation split"):
        validation_cka(cfg, tmp_path / "same", cache)
