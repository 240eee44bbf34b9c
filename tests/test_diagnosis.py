"""Diagnosis on runs with known faults: each fault, made by the test, is flagged by its health
check and a clean run is not; the copied-mistake counts and the layer AUROCs are recomputed here
from the stored records, independently of `kd_engine.diagnosis`."""
from __future__ import annotations

import json
import sqlite3

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from diagnosis_runs import EPOCHS, fixture_runs, unfired_tap_run  # noqa: F401  (fixture)
from kd_engine.diagnosis import adoption, copied_mistakes, find_control, layer_prediction, run_health
from kd_engine.diagnosis import weighting_effect, weighting_frame
from kd_engine.store import RunWriter, open_run
from raw_store import raw_instances

pytestmark = pytest.mark.slow


def statuses(run_dir) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for check in run_health(open_run(run_dir)):
        out.setdefault(check.name, []).append(check.status)
    return out


def flagged_names(run_dir) -> set[str]:
    return {c.name for c in run_health(open_run(run_dir)) if c.flagged}


# -- health ------------------------------------------------------------------------------------
def test_clean_run_is_not_flagged(fixture_runs):
    checks = run_health(open_run(fixture_runs.clean))
    assert not [c for c in checks if c.flagged], [(c.name, c.message) for c in checks if c.flagged]
    by_name = {c.name: c for c in checks}
    assert by_name["teacher"].status == "ok" and by_name["validation progress"].status == "ok"
    assert by_name["instance weights"].status == "ok"  # teacher_confidence weights spread
    # no gradient norms recorded in this run: the check says so instead of passing
    assert by_name["gradient balance"].status == "no data" and "grad_norms_every" in by_name["gradient balance"].message


def test_shuffled_teacher_is_flagged_at_chance(fixture_runs):
    checks = [c for c in run_health(open_run(fixture_runs.shuffled)) if c.name == "teacher"]
    assert checks[0].status == "fail" and "no better than chance" in checks[0].message
    assert checks[0].key == "val/teacher_acc" and checks[0].page == "Curves"
    # the same student with the real teacher passes the check
    assert statuses(fixture_runs.clean)["teacher"] == ["ok"]


def test_zero_weight_term_is_flagged(fixture_runs):
    checks = [c for c in run_health(open_run(fixture_runs.weight0)) if c.name == "distillation terms"]
    assert all(c.flagged for c in checks) and len(checks) == 2, checks
    assert any("distill.terms.0.weight" in c.message for c in checks)
    zero = [c for c in checks if c.key == "train/distill"]
    assert zero and "exactly zero" in zero[0].message
    assert flagged_names(fixture_runs.weight0) == {"distillation terms"}


def test_tiny_learning_rate_flat_validation_is_flagged(fixture_runs):
    checks = [c for c in run_health(open_run(fixture_runs.flat)) if c.name == "validation progress"]
    assert checks[0].status == "warn" and checks[0].key == "val/student_acc"
    assert "learning rate may be too small" in checks[0].message
    values = open_run(fixture_runs.flat).scalars(keys=["val/student_acc"])["value"]
    assert values.max() - values.min() < 0.01  # the fault really is there


def test_feature_tap_that_never_fired_is_flagged(tmp_path):
    run_dir = unfired_tap_run(tmp_path / "runs")
    checks = [c for c in run_health(open_run(run_dir)) if c.name == "feature taps"]
    assert len(checks) == 1 and checks[0].status == "fail"
    assert "unused_head" in checks[0].message and checks[0].key == "tap_calls/student/unused_head"
    assert checks[0].epoch == 0
    # a trainer that does not count hook calls: the layer's missing feature records tell instead
    run_dir = unfired_tap_run(tmp_path / "runs", "20260101-000000-untapped-0001", tap_calls=False)
    checks = [c for c in run_health(open_run(run_dir)) if c.name == "feature taps"]
    assert len(checks) == 1 and checks[0].status == "fail" and checks[0].page == "Features"
    assert "'unused_head' has no recorded teacher-student features after 2 epoch(s)" in checks[0].message


def _hand_run(runs_dir, run_id, grads=None, weights=None, strategy="aid", distill=lambda step: 1.0 / (step + 1)):
    config = {"name": run_id, "seed": 0, "teacher": {"name": "resnet"}, "student": {"name": "resnet"},
              "distill": {"terms": [{"loss": "kd", "weight": 1.0}]}, "weighting": {"strategy": strategy}}
    writer = RunWriter.create(runs_dir, run_id, {"method": "standard"}, yaml.safe_dump(config), run_id=run_id,
                              tensorboard=False)
    for step in range(20):
        values = {"train/distill": distill(step), "train/loss": 2.0 / (step + 1)}
        values.update({f"grad_norm/{k}": v * (1 + 0.01 * step) for k, v in (grads or {}).items()})
        writer.log_scalars(step, step // 10, values)
    if weights is not None:
        writer.log_instances({"split": np.full(len(weights), "train"), "epoch": np.zeros(len(weights)),
                              "instance_id": np.arange(len(weights)), "weight": weights})
    writer.close()
    return writer.run_dir


@pytest.mark.parametrize("distill, verdict", [(0.001, "negligible"), (500.0, "swamps"), (2.0, None)])
def test_gradient_balance(tmp_path, distill, verdict):
    run_dir = _hand_run(tmp_path, "grads", grads={"task": 1.0, "distill": distill})
    check = [c for c in run_health(open_run(run_dir)) if c.name == "gradient balance"][0]
    assert check.key == "grad_norm/distill"
    if verdict is None:
        assert check.status == "ok"
    else:
        assert check.status == "warn" and verdict in check.message


@pytest.mark.parametrize("weights, status", [(np.ones(50), "warn"), (np.zeros(50), "fail"),
                                             (np.linspace(0.1, 1.9, 50), "ok")])
def test_collapsed_weights(tmp_path, weights, status):
    run_dir = _hand_run(tmp_path, "weights", weights=weights)
    check = [c for c in run_health(open_run(run_dir)) if c.name == "instance weights"][0]
    assert check.status == status, check.message


# -- copied mistakes ---------------------------------------------------------------------------
def _raw_val_rows(run_dir) -> pd.DataFrame:
    """The val instance rows read straight from the SQLite file, not through the read API."""
    return raw_instances(run_dir, ["epoch", "instance_id", "label", "teacher_pred", "student_pred"], "val")


def test_copied_mistake_counts_recomputed_from_records(fixture_runs):
    run = open_run(fixture_runs.clean)
    control = find_control(run)
    assert control is not None and control.run_dir == fixture_runs.scratch
    table = adoption(run, control=control).set_index("epoch")
    rows, scratch = _raw_val_rows(fixture_runs.clean), _raw_val_rows(fixture_runs.scratch)
    assert sorted(table.index) == sorted(rows["epoch"].unique())
    for epoch, group in rows.groupby("epoch"):
        mistakes = {i: (t, s) for i, y, t, s in zip(group.instance_id, group.label, group.teacher_pred,
                                                    group.student_pred) if t != y}
        adopted = sum(1 for t, s in mistakes.values() if s == t)
        ctl = scratch[scratch["epoch"] == epoch].set_index("instance_id")["student_pred"]
        control_adopted = sum(1 for i, (t, _) in mistakes.items() if ctl[i] == t)
        assert table.loc[epoch, "teacher_mistakes"] == len(mistakes) > 0
        assert table.loc[epoch, "adopted"] == adopted
        assert table.loc[epoch, "control_adopted"] == control_adopted
    last = rows[rows["epoch"] == rows["epoch"].max()]
    expected = set(last[(last.teacher_pred != last.label) & (last.student_pred == last.teacher_pred)].instance_id)
    ranked = copied_mistakes(run)
    assert set(ranked["instance_id"]) == expected
    assert (ranked["teacher_pred"] != ranked["label"]).all() and (ranked["student_pred"] == ranked["teacher_pred"]).all()
    assert ranked["epochs_copied"].is_monotonic_decreasing


def test_control_must_share_data_and_seed(fixture_runs, tmp_path):
    """A scratch run of another seed is no control."""
    run = open_run(fixture_runs.clean)
    other = tmp_path / "runs"
    scratch = yaml.safe_load((fixture_runs.scratch / "config.yaml").read_text())
    scratch["seed"] = 7
    RunWriter.create(other, "scratch7", {"method": "scratch"}, yaml.safe_dump(scratch), tensorboard=False).close()
    assert find_control(run, other) is None


# -- layers ------------------------------------------------------------------------------------
def test_layer_auroc_matches_sklearn_on_the_stored_records(fixture_runs):
    run_dir = fixture_runs.clean
    scores = layer_prediction(open_run(run_dir))
    with sqlite3.connect(run_dir / "store.sqlite") as conn:
        artifacts = pd.read_sql_query("SELECT epoch, path, meta FROM artifacts WHERE kind = 'instance_disparity'", conn)
    rows = raw_instances(run_dir, ["epoch", "instance_id", "label", "student_pred", "student_loss"], "val")
    assert len(artifacts) == EPOCHS  # one per epoch
    checked = 0
    for artifact in artifacts.itertuples():
        meta = json.loads(artifact.meta)
        values = np.load(run_dir / artifact.path)
        student = rows[rows["epoch"] == artifact.epoch].set_index("instance_id").loc[meta["instance_ids"]]
        wrong = (student["student_pred"] != student["label"]).to_numpy()
        for k, (s_layer, t_layer) in enumerate(meta["pairs"]):
            got = scores[(scores.epoch == artifact.epoch) & (scores.student_layer == s_layer)].iloc[0]
            assert got["auroc"] == pytest.approx(roc_auc_score(wrong, values[:, k]), abs=1e-12)
            assert got["spearman"] == pytest.approx(spearmanr(values[:, k], student["student_loss"]).statistic, abs=1e-12)
            assert got["errors"] == wrong.sum() and got["instances"] == len(wrong)
            checked += 1
    assert checked == len(scores) > 0


def test_gram_row_disparity_known_answers():
    import torch

    from kd_engine.trainers.instance_disparity import gram_row_disparity

    x = torch.randn(20, 6, generator=torch.Generator().manual_seed(0))
    rotation = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(1)))[0]
    # the same features in a rotated, wider space: every instance relates to the others identically
    same = gram_row_disparity(x, torch.cat([x @ rotation, torch.zeros(20, 3)], 1) * 3.0)
    assert torch.allclose(same, torch.zeros(20), atol=1e-6)
    # by hand for one instance: 1 - Pearson of its off-diagonal centred Gram rows
    y = torch.randn(20, 4, generator=torch.Generator().manual_seed(2))
    xc, yc = (x - x.mean(0)).double(), (y - y.mean(0)).double()
    a, b = np.delete((xc @ xc.T)[3].numpy(), 3), np.delete((yc @ yc.T)[3].numpy(), 3)
    assert gram_row_disparity(x, y)[3].item() == pytest.approx(1 - np.corrcoef(a, b)[0, 1], abs=1e-5)


# -- weighting ---------------------------------------------------------------------------------
def test_weighting_effect_table(fixture_runs, tmp_path):
    run = open_run(fixture_runs.clean)
    frame = weighting_frame(run)
    table = weighting_effect(run, frame=frame)
    teacher = frame.dropna(subset=["teacher_correct"])
    expected = roc_auc_score(teacher["teacher_correct"].astype(bool), teacher["weight"])
    row = table[(table.factor == "teacher_correct") & (table.group == "teacher right")].iloc[0]
    assert row["auroc"] == pytest.approx(expected) and row["auroc"] > 0.8  # confident teachers weigh more
    assert table.groupby("factor")["instances"].sum().eq(len(frame)).all()
    assert "clean_label" not in set(table.factor)  # digits knows no label noise

    # a `noisy` column, where the data knows it, becomes the third factor
    writer = RunWriter.create(tmp_path, "noisy", {}, yaml.safe_dump({"name": "noisy"}), tensorboard=False)
    noisy = np.array([0, 0, 0, 1, 1, 0])
    writer.log_instances({"split": np.full(6, "train"), "epoch": np.zeros(6), "instance_id": np.arange(6),
                          "label": np.zeros(6), "teacher_pred": np.zeros(6), "student_pred": np.zeros(6),
                          "weight": np.array([0.9, 0.8, 0.7, 0.1, 0.75, 0.6]), "noisy": noisy,
                          "selected": np.array([1, 1, 0, 0, 0, 1])})
    writer.close()
    table = weighting_effect(open_run(writer.run_dir)).set_index(["factor", "group"])
    assert table.loc[("clean_label", "noisy label"), "mean_weight"] == pytest.approx(0.425)
    # clean weights 0.9, 0.8, 0.7, 0.6 against noisy 0.1, 0.75: 6 of 8 pairs ordered right
    assert table.loc[("clean_label", "clean label"), "auroc"] == pytest.approx(6 / 8)
    # a method's own per-instance selection is analysed the same way: 3 of 4 clean selected, 0 of 2 noisy
    selected = weighting_effect(open_run(writer.run_dir), column="selected").set_index(["factor", "group"])
    assert selected.loc[("clean_label", "clean label"), "mean_weight"] == pytest.approx(0.75)
    assert selected.loc[("clean_label", "noisy label"), "mean_weight"] == 0.0
    # of the 8 (clean, noisy) pairs, the 3 selected clean instances beat both noisy ones (6) and
    # the unselected clean one ties both (2 ties, counted a half each)
    assert selected.loc[("clean_label", "clean label"), "auroc"] == pytest.approx((6 + 0.5 * 2) / 8)


def test_health_of_a_run_that_just_started(tmp_path):
    """While a run trains, checks without their records yet say "no data" (never "ok")."""
    run_dir = _hand_run(tmp_path, "young")  # a few training steps, no evaluation, no instances
    checks = {c.name: c for c in run_health(open_run(run_dir))}
    for name in ("teacher", "validation progress", "instance weights", "gradient balance"):
        assert checks[name].status == "no data", (name, checks[name])
    assert checks["distillation terms"].status == "ok"



@pytest.mark.parametrize("distill, status, words", [
    (lambda step: 0.7, "warn", "constant (0.7)"),
    (lambda step: float("nan") if step == 13 else 1.0 / (step + 1), "fail", "not finite (first at step 13)"),
    (lambda step: 0.0, "fail", "exactly zero"),
])
def test_dead_distillation_term(tmp_path, distill, status, words):
    run_dir = _hand_run(tmp_path, "terms", distill=distill)
    check = [c for c in run_health(open_run(run_dir)) if c.name == "distillation terms"][0]
    assert check.status == status and words in check.message and check.key == "train/distill"


def test_report_command_writes_the_page(fixture_runs, tmp_path, capsys):
    """`kdw report` in-process (the browser test opens the file; this one runs without chromium)."""
    from kd_engine.cli import main

    out = tmp_path / "one.html"
    assert main(["report", fixture_runs.weight0.name, "--runs-dir", str(fixture_runs.runs_dir), "--output",
                 str(out), "--control", fixture_runs.scratch.name]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    text = out.read_text()
    assert f"control: scratch run <code>{fixture_runs.scratch.name}</code>" in text
    assert "has weight 0 (distill.terms.0.weight)" in text and text.count("Plotly.newPlot") >= 8
    out = tmp_path / "two.html"
    assert main(["report", fixture_runs.clean.name, fixture_runs.weight0.name, "--runs-dir",
                 str(fixture_runs.runs_dir), "--output", str(out)]) == 0
    text = out.read_text()
    assert "<h2>Side by side</h2>" in text and "distillation terms" in text  # weight0's problem, in the summary
    assert main(["report", "no-such-run", "--runs-dir", str(fixture_runs.runs_dir)]) == 2
    assert capsys.readouterr().err.startswith("error: run 'no-such-run': not found")
