"""The notebook skeleton: `experiment.setup`, `collect_scalars`/`collect_instances` over many runs,
`NotebookContext.save`, and the claim verdict `reporting.claim` (hand-computed tables)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kd_engine.errors import KDWError
from kd_engine.experiment import collect_instances, collect_scalars, setup, summarize
from kd_engine.reporting import claim, claims
from kd_engine.store import RunWriter


# -- setup ------------------------------------------------------------------------------------------
def test_setup_smoke_from_a_repository_config(tmp_path, capsys):
    ctx = setup("p99_demo", "configs/digits_kd.yaml", "smoke", seeds=5, work_dir=tmp_path / "work")
    assert ctx.name == "p99_demo" and ctx.budget == "smoke" and ctx.seeds == [0]
    assert ctx.work == tmp_path / "work"
    assert (ctx.runs_dir, ctx.cache_dir) == (tmp_path / "work" / "runs", tmp_path / "work" / "cache")
    # the budget applied to the shipped config (15 student / 20 teacher epochs there)
    assert ctx.base["epochs"] == 2 and ctx.base["teacher"]["train"]["epochs"] == 2 and ctx.base["threads"] == 1
    assert ctx.base["distill"]["terms"][0]["loss"] == "kd"
    out = capsys.readouterr().out
    assert "budget smoke: seeds [0], student epochs 2, teacher epochs 2, 1 torch thread(s) per run" in out
    assert f"kdw dashboard --runs-dir {ctx.runs_dir}" in out
    assert ctx.wall_s >= 0


def test_setup_full_budget_and_a_raw_config(tmp_path):
    raw = {"name": "x", "epochs": 7, "student": {"name": "mlp"}}
    ctx = setup("x", raw, "full", seeds=4, work_dir=tmp_path, show=False, epochs=3)
    assert ctx.seeds == [0, 1, 2, 3] and ctx.base["epochs"] == 3 and raw["epochs"] == 7  # raw is not changed
    bare = setup("y", None, "full", seeds=3, show=False)
    assert bare.base is None and bare.work.name.startswith("kdw-y-") and bare.settings["epochs"] is None
    with pytest.raises(KDWError, match="below the minimum of 3"):
        setup("x", raw, "full", seeds=2, show=False)
    with pytest.raises(KDWError, match="budget 'huge'"):
        setup("x", raw, "huge", show=False)


def test_save_writes_the_results_under_the_notebook_name(tmp_path):
    ctx = setup("p99_demo", None, "full", seeds=3, work_dir=tmp_path, show=False)
    frame = pd.DataFrame({"arm": ["a", "b"] * 3, "seed": [0, 0, 1, 1, 2, 2],
                          "acc": [0.5, 0.6, 0.5, 0.7, 0.6, 0.65]})
    summary = summarize(frame, "acc", baseline="a")
    path = tmp_path / "out" / "p99_demo.json"
    ctx.save(path, [(summary, "a")], title="T", notes="N")
    payload = json.loads(path.read_text())
    assert payload["notebook"] == "p99_demo" and payload["budget"] == "full" and payload["seeds"] == [0, 1, 2]
    assert payload["title"] == "T" and payload["notes"] == "N" and payload["wall_s"] >= 0
    b = next(r for r in payload["rows"] if r["arm"] == "b")
    assert b["diff_mean"] == pytest.approx((0.1 + 0.2 + 0.05) / 3) and b["baseline"] == "a"
    assert ctx.save(None, [(summary, "a")], title="T")["notebook"] == "p99_demo"  # interactive: nothing written


# -- collecting many runs ---------------------------------------------------------------------------
def _fake_run(runs_dir, run_id: str, offset: float) -> str:
    writer = RunWriter.create(runs_dir, "exp", {"method": "standard"}, "name: exp\n", run_id=run_id,
                              tensorboard=False)
    for step in range(3):
        writer.log_scalars(step, step // 2, {"train/loss": offset + step, "val/acc": offset / 10})
    writer.flush()
    ids = np.arange(4)
    writer.log_instances({"split": np.full(4, "train"), "epoch": np.zeros(4, dtype=int), "step": ids,
                          "instance_id": ids, "label": ids % 2, "weight": offset + ids / 10})
    writer.log_instances({"split": np.full(2, "test"), "epoch": np.ones(2, dtype=int), "step": np.arange(2),
                          "instance_id": np.arange(2), "label": np.arange(2), "weight": np.full(2, -1.0)})
    writer.close()
    return str(writer.run_dir)


@pytest.fixture
def runs_frame(tmp_path):
    rows = [{"arm": arm, "seed": seed, "run_dir": _fake_run(tmp_path, f"{arm}-{seed}", 10 * i + seed)}
            for i, arm in enumerate(["scratch", "kd"]) for seed in (0, 1)]
    return pd.DataFrame(rows)


def test_collect_scalars_tags_every_run(runs_frame):
    curves = collect_scalars(runs_frame, ["train/loss"])
    assert set(curves["key"]) == {"train/loss"} and len(curves) == 4 * 3
    kd1 = curves[(curves["arm"] == "kd") & (curves["seed"] == 1)].sort_values("step")
    assert kd1["value"].tolist() == [11.0, 12.0, 13.0]  # offset 10·1 + seed 1, plus the step
    assert kd1["epoch"].tolist() == [0, 0, 1]
    everything = collect_scalars(runs_frame)
    assert set(everything["key"]) == {"train/loss", "val/acc"}
    only_seed = collect_scalars(runs_frame[runs_frame["arm"] == "kd"], ["val/acc"], tags=["seed"])
    assert "arm" not in only_seed and sorted(only_seed["seed"].unique()) == [0, 1]


def test_collect_instances_tags_every_run(runs_frame):
    train = collect_instances(runs_frame, split="train", columns=["instance_id", "weight"])
    assert len(train) == 4 * 4 and {"arm", "seed", "instance_id", "weight"} <= set(train.columns)
    scratch0 = train[(train["arm"] == "scratch") & (train["seed"] == 0)].sort_values("instance_id")
    np.testing.assert_allclose(scratch0["weight"], [0.0, 0.1, 0.2, 0.3])
    test = collect_instances(runs_frame, split="test", columns=["instance_id", "weight"])
    assert len(test) == 4 * 2 and (test["weight"] == -1.0).all()
    with pytest.raises(KDWError, match="no runs"):
        collect_instances(runs_frame.iloc[:0])


# -- the claim verdict ------------------------------------------------------------------------------
def _summary(diffs, baseline_values=(0.80, 0.82, 0.84, 0.86)):
    rows = []
    for seed, (base, diff) in enumerate(zip(baseline_values, diffs)):
        rows += [{"arm": "base", "seed": seed, "m": base}, {"arm": "new", "seed": seed, "m": base + diff}]
    return summarize(pd.DataFrame(rows), "m", baseline="base")


@pytest.mark.parametrize("diffs, lower_is_better, expected", [
    # mean 0.0475, std 0.0095743, threshold 2·std/√4 = 0.0095743: resolved
    ([0.05, 0.04, 0.06, 0.04], False, "holds"),
    ([0.05, 0.04, 0.06, 0.04], True, "contradicted"),
    ([-0.05, -0.04, -0.06, -0.04], False, "contradicted"),
    ([-0.05, -0.04, -0.06, -0.04], True, "holds"),
    # mean 0.005, std 0.0238048 > |mean|: within noise either way
    ([0.03, -0.02, 0.02, -0.01], False, "not shown"),
    ([0.03, -0.02, 0.02, -0.01], True, "not shown"),
])
def test_claim_hand_computed(diffs, lower_is_better, expected):
    assert claim(_summary(diffs), "new", lower_is_better=lower_is_better) == expected


def test_one_seed_never_shows_a_claim():
    assert claim(_summary([0.5], baseline_values=[0.1]), "new") == "not shown"


def test_claims_group_several_baselines():
    summaries = {"kd": _summary([0.05, 0.04, 0.06, 0.04]), "dml": _summary([0.03, -0.02, 0.02, -0.01]),
                 "ce": _summary([-0.05, -0.04, -0.06, -0.04])}
    assert claims(summaries, "new") == {"holds": ["kd"], "contradicted": ["ce"], "not shown": ["dml"]}
