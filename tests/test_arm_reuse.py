"""An experiment spans sittings: finished arms are reused, an interrupted one resumes."""
from __future__ import annotations

import pytest

import kd_engine.run
from kd_engine.arm_runs import describe_reuse
from kd_engine.experiment import run_arms
from kd_engine.trainer import Trainer

ARMS = {"scratch": {"method": "scratch"}, "kd": {}}
METRICS = ["test/student_acc"]


def _interrupt_after_first_epoch(monkeypatch, arm_name: str) -> None:
    """Stop the named arm (Ctrl-C) right after its first epoch's checkpoint."""
    original = Trainer._end_of_epoch

    def end_of_epoch(self, epoch):
        original(self, epoch)
        if epoch == 0 and self.cfg.name.endswith(f"-{arm_name}-s0"):
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_end_of_epoch", end_of_epoch)


def test_interrupted_experiment_reuses_finished_arms_and_resumes(make_raw, tmp_path, monkeypatch):
    raw = make_raw({"epochs": 2})
    reference = run_arms(raw, ARMS, [0], tmp_path / "ref", raw["cache_dir"], verbose=False)
    assert list(reference["source"]) == ["trained", "trained"]

    runs = tmp_path / "runs"
    with monkeypatch.context() as m:
        _interrupt_after_first_epoch(m, "kd")
        with pytest.raises(KeyboardInterrupt):  # scratch finishes, kd is killed after epoch 0
            run_arms(raw, ARMS, [0], runs, raw["cache_dir"], verbose=False)

    calls = []
    original = kd_engine.run.train
    monkeypatch.setattr(kd_engine.run, "train", lambda *a, **k: calls.append(k) or original(*a, **k))
    again = run_arms(raw, ARMS, [0], runs, raw["cache_dir"], verbose=False)
    assert list(again["source"]) == ["reused", "resumed"]
    assert len(calls) == 1 and calls[0]["resume"] is not None  # scratch did not train again
    assert list(again[METRICS[0]]) == pytest.approx(list(reference[METRICS[0]]), abs=1e-9)
    assert "reused 1 finished run(s): scratch/s0" in describe_reuse(again.to_dict("records"))

    calls.clear()
    third = run_arms(raw, ARMS, [0], runs, raw["cache_dir"], verbose=False)
    assert list(third["source"]) == ["reused", "reused"] and not calls
    assert list(third["run_id"]) == list(again["run_id"])

    changed = run_arms(make_raw({"epochs": 2, "seed": 0, "optimizer.lr": 0.01}), {"scratch": ARMS["scratch"]},
                       [0], runs, raw["cache_dir"], verbose=False)
    assert list(changed["source"]) == ["trained"]  # another setting is another run
