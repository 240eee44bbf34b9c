"""kd_engine.experiment: budgets, the reporting rule (hand-computed numbers), results rows."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from kd_engine.errors import KDWError
from kd_engine.experiment import (apply_budget, arm_config, budget_settings, format_summary,
                                  reference_arm, repo_file, results_rows, run_arms, save_results,
                                  summarize, verdict)

# Four seeds. kd - scratch = [0.05, 0.04, 0.06, 0.04]: mean 0.0475, std 0.0095743 (n-1),
# threshold 2*std/sqrt(4) = 0.0095743 -> resolved.
# other - scratch = [0.03, -0.02, 0.02, -0.01]: mean 0.005, std 0.0238048,
# threshold 0.0238048 -> within noise.
SCRATCH = [0.80, 0.82, 0.84, 0.86]
KD = [0.85, 0.86, 0.90, 0.90]
OTHER = [0.83, 0.80, 0.86, 0.85]


def frame() -> pd.DataFrame:
    rows = []
    for arm, values in (("scratch", SCRATCH), ("kd", KD), ("other", OTHER)):
        rows += [{"arm": arm, "seed": seed, "acc": v} for seed, v in enumerate(values)]
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # order of rows must not matter


def test_summarize_hand_computed():
    summary = summarize(frame(), "acc", baseline="scratch").set_index("arm")
    assert set(summary.index) == {"kd", "other", "scratch"}
    scratch, kd, other = summary.loc["scratch"], summary.loc["kd"], summary.loc["other"]
    assert scratch["mean"] == pytest.approx(0.83)
    assert scratch["std"] == pytest.approx(math.sqrt(0.002 / 3))          # 0.0258199
    assert scratch["n"] == 4 and scratch["verdict"] == "baseline"
    assert kd["mean"] == pytest.approx(0.8775)
    assert kd["std"] == pytest.approx(math.sqrt(0.002075 / 3))            # 0.0262996
    assert kd["diff_mean"] == pytest.approx(0.0475)
    assert kd["diff_std"] == pytest.approx(math.sqrt(0.000275 / 3))       # 0.0095743
    assert kd["threshold"] == pytest.approx(2 * math.sqrt(0.000275 / 3) / 2)
    assert kd["verdict"] == "resolved"
    assert other["mean"] == pytest.approx(0.835)
    assert other["diff_mean"] == pytest.approx(0.005)
    assert other["diff_std"] == pytest.approx(math.sqrt(0.0017 / 3))      # 0.0238048
    assert other["verdict"] == "within noise"


def test_pairing_matters():
    # Same kd values, but no longer moving with scratch seed by seed: kd = [0.90, 0.90, 0.86, 0.85]
    # -> diffs [0.10, 0.08, 0.02, -0.01], mean 0.0475 as before, std 0.0512348, threshold 0.0512348.
    data = frame()
    data.loc[data.arm == "kd", "acc"] = data.loc[data.arm == "kd", "seed"].map(dict(enumerate(KD[::-1])))
    summary = summarize(data, "acc", "scratch").set_index("arm")
    assert summary.loc["kd", "diff_mean"] == pytest.approx(0.0475)
    assert summary.loc["kd", "diff_std"] == pytest.approx(math.sqrt(0.007875 / 3))
    assert summary.loc["kd", "verdict"] == "within noise"


def test_verdict_rule_edges():
    assert verdict([0.1]) == "within noise"                  # one seed: no verdict possible
    assert verdict([0.01, 0.01, 0.01]) == "resolved"          # zero spread, non-zero mean
    assert verdict([0.0, 0.0, 2.0, 2.0]) == "within noise"    # mean 1 <= 2*1.1547/2
    assert verdict([-0.05, -0.04, -0.06, -0.04]) == "resolved"  # a resolved harm counts too
    assert verdict([0.1, float("nan"), 0.1]) == "within noise"


def test_summarize_refuses_dropped_seeds_and_bad_names():
    data = frame()
    with pytest.raises(KDWError, match="seeds are never dropped"):
        summarize(data[~((data.arm == "kd") & (data.seed == 2))], "acc", "scratch")
    with pytest.raises(KDWError, match="baseline arm 'nope'"):
        summarize(data, "acc", "nope")
    with pytest.raises(KDWError, match="no column"):
        summarize(data, "test/acc", "scratch")


def test_single_seed_summary_has_no_std():
    data = frame()
    summary = summarize(data[data.seed == 0], "acc", "scratch").set_index("arm")
    assert math.isnan(summary.loc["kd", "std"]) and summary.loc["kd", "verdict"] == "within noise"
    shown = format_summary(summary.reset_index()).set_index("arm")
    assert shown.loc["kd", "mean ± std"] == "0.8500 ± n/a"
    assert shown.loc["scratch", "paired diff ± std"] == "—"


def test_budget_settings():
    smoke = budget_settings("smoke")
    assert smoke["seeds"] == [0] and smoke["epochs"] == 2 and smoke["teacher_epochs"] == 2
    full = budget_settings("full")
    assert full["seeds"] == [0, 1, 2, 3, 4] and full["epochs"] is None
    with pytest.raises(KDWError, match="minimum of 3"):
        budget_settings("full", seeds=2)
    with pytest.raises(KDWError, match="budget 'huge'"):
        budget_settings("huge")
    raw = {"epochs": 15, "teacher": {"name": "resnet", "train": {"epochs": 20}}}
    assert apply_budget(raw, smoke)["teacher"]["train"]["epochs"] == 2
    kept = apply_budget(raw, full)
    assert kept["epochs"] == 15 and kept["teacher"]["train"]["epochs"] == 20 and kept["threads"] == 1
    assert raw["teacher"]["train"]["epochs"] == 20  # the input is not modified


def test_reference_arm_copies_teacher_metrics():
    data = pd.DataFrame([{"arm": "kd", "seed": 0, "test/student_acc": 0.9, "test/teacher_acc": 0.97}])
    teacher = reference_arm(data, "kd")
    assert teacher.iloc[0]["arm"] == "teacher" and teacher.iloc[0]["test/student_acc"] == 0.97
    assert data.iloc[0]["test/student_acc"] == 0.9
    with pytest.raises(KDWError):
        reference_arm(data, "missing")


def test_results_rows_and_json(tmp_path):
    summary = summarize(frame(), "acc", "scratch")
    rows = results_rows("nb", summary, "full", [0, 1, 2, 3], 12.345, baseline="scratch")
    by_arm = {r["arm"]: r for r in rows}
    assert by_arm["scratch"]["diff_mean"] is None and by_arm["kd"]["verdict"] == "resolved"
    assert by_arm["kd"]["seeds"] == [0, 1, 2, 3] and by_arm["kd"]["wall_s"] == 12.35
    path = tmp_path / "out" / "nb.json"
    save_results(path, "nb", [(summary, "scratch")], "full", range(4), 12.3)
    payload = json.loads(path.read_text())  # strict JSON: NaN became null
    assert payload["budget"] == "full" and len(payload["rows"]) == 3
    assert save_results(None, "nb", [(summary, "scratch")], "smoke", [0], 1.0)["rows"]


def test_repo_file_from_a_subdirectory(monkeypatch):
    root = repo_file("configs/digits_kd.yaml").parent.parent
    monkeypatch.chdir(root / "notebooks")
    assert repo_file("configs/digits_kd.yaml") == root / "configs" / "digits_kd.yaml"
    with pytest.raises(KDWError, match="not found"):
        repo_file("configs/no_such.yaml")


def test_arm_config_applies_overrides(tmp_path):
    base = {"name": "x", "student": {"name": "mlp"}, "epochs": 3}
    cfg = arm_config(base, {"optimizer.lr": 0.01, "method": "scratch"}, 7, tmp_path / "r", tmp_path / "c", "x-a")
    assert cfg.seed == 7 and cfg.optimizer.lr == 0.01 and cfg.method == "scratch"
    assert cfg.runs_dir == str(tmp_path / "r") and cfg.name == "x-a"
    assert "optimizer" not in base


@pytest.mark.slow
def test_run_arms_trains_every_arm_on_every_seed(make_raw, tmp_path):
    raw = make_raw({"epochs": 1})
    out = run_arms(raw, {"scratch": {"method": "scratch"}, "kd": {}}, [0, 1], tmp_path / "runs",
                   raw["cache_dir"], verbose=False)
    assert sorted(zip(out.arm, out.seed)) == [("kd", 0), ("kd", 1), ("scratch", 0), ("scratch", 1)]
    assert out["test/student_acc"].between(0, 1).all() and out["run_id"].is_unique


@pytest.mark.slow
def test_run_arms_in_worker_processes_matches_one_after_another(make_raw, tmp_path):
    """Two spawned workers give the same rows, in the same order, as training sequentially."""
    raw = make_raw({"epochs": 1})
    arms = {"scratch": {"method": "scratch"}, "kd": {}}
    one = run_arms(raw, arms, [0, 1], tmp_path / "a", raw["cache_dir"], verbose=False)
    two = run_arms(raw, arms, [0, 1], tmp_path / "b", raw["cache_dir"], verbose=False, workers=2)
    assert list(zip(two.arm, two.seed)) == list(zip(one.arm, one.seed))
    assert two["test/student_acc"].tolist() == one["test/student_acc"].tolist()
    assert all(str(tmp_path / "b") in d for d in two.run_dir)


def test_verdict_in_words_from_a_summary_row():
    from kd_engine.reporting import arm_row, claim, describe

    table = summarize(frame(), "acc", baseline="scratch")
    assert arm_row(table, "kd")["n"] == 4
    assert describe(table, "kd", "kd − scratch") == \
        "kd − scratch: +0.0475 ± 0.0096 (threshold 0.0096; resolved, higher)"
    assert describe(table, "other", "other − scratch", threshold=False) == \
        "other − scratch: +0.0050 ± 0.0238 (within noise)"
    # a lower-is-better metric: the same resolved gain in accuracy reads as worse
    assert describe(table, "kd", "kd", words=("better", "worse"), lower_is_better=True).endswith(
        "(threshold 0.0096; resolved, worse)")
    assert claim(table, "kd") == "holds" and claim(table, "other") == "not shown"
    flipped = summarize(frame(), "acc", baseline="kd")
    assert claim(flipped, "scratch") == "contradicted"
    one_seed = summarize(frame()[frame()["seed"] == 0], "acc", baseline="scratch")
    assert describe(one_seed, "kd", "kd − scratch") == "kd − scratch: +0.0500 on one seed (no verdict possible)"


def test_work_dirs(tmp_path):
    from kd_engine.experiment import work_dirs

    assert work_dirs(tmp_path / "w", "p99-x") == (tmp_path / "w", tmp_path / "w" / "runs", tmp_path / "w" / "cache")
    work, runs, cache = work_dirs(None, "p99-x")
    assert work.is_dir() and work.name.startswith("kdw-p99-x-") and runs == work / "runs" and cache == work / "cache"
    work.rmdir()
