"""A method's phase before the epochs (Cr-KD's stage 1) is stepped by the trainer: a non-finite
stage-1 loss stops the run with the trainer's one-line NonFiniteLossError before any weight moves,
and the run is recorded as failed."""
from __future__ import annotations

import pytest
from conftest import REPO
from kd_engine.config import apply_override, load_raw, validate
from kd_engine.errors import NonFiniteLossError
from conftest import run_dirs
from kd_engine.store import open_run


def test_a_non_finite_stage1_loss_is_refused(tmp_path, monkeypatch):
    import kd_engine.methods.ncd_stage as ncd_stage
    from kd_engine.run import train

    raw = load_raw(REPO / "configs" / "crkd_digits.yaml")
    for assignment in ["epochs=1", "threads=1", "device=cpu", "record.tensorboard=false",
                       "data.test_fraction=0.8", "distill.params.stage1_epochs=1", "student.params.width=4",
                       "student.params.heads=2", f"runs_dir={tmp_path / 'runs'}", f"cache_dir={tmp_path / 'c'}"]:
        apply_override(raw, assignment)
    monkeypatch.setattr(ncd_stage.F, "cross_entropy", lambda logits, y: logits.sum() * float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(stage1\) at stage 1 step 0"):
        train(validate(raw), distributed=False)
    (run_dir,) = run_dirs(tmp_path / "runs")
    run = open_run(run_dir)
    assert run.status() == "failed"
    assert not (run.run_dir / "checkpoints" / "state.pt").exists()  # no epoch finished
