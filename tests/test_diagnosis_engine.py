"""The gradient-balance check on real engine output: runs trained with `record.grad_norms_every`
record `grad_norm/<loss>` scalars, and the health check reads them (the hand-built stores of
test_diagnosis.py only fix the check's thresholds)."""
from __future__ import annotations

import pytest

from kd_engine.config import validate
from kd_engine.diagnosis import run_health
from kd_engine.run import train
from kd_engine.store import open_run

pytestmark = pytest.mark.slow


def _gradient_checks(make_raw, name: str, kd_weight: float) -> list:
    raw = make_raw({"name": name, "epochs": 1, "record.tensorboard": False, "record.grad_norms_every": 2,
                    "distill.terms.0.weight": kd_weight})
    run = open_run(train(validate(raw), distributed=False))
    keys = set(run.scalars()["key"])
    assert {"grad_norm/task", "grad_norm/distill"} <= keys, sorted(k for k in keys if "grad" in k)
    return [c for c in run_health(run) if c.name == "gradient balance"]


def test_a_negligible_distillation_gradient_is_flagged(make_raw):
    checks = _gradient_checks(make_raw, "tiny_kd", 1e-5)
    assert any(c.flagged and "negligible" in c.message for c in checks), [(c.status, c.message) for c in checks]


def test_a_working_distillation_gradient_is_balanced(make_raw):
    checks = _gradient_checks(make_raw, "kd", 1.0)
    assert checks and not any(c.flagged for c in checks), [(c.status, c.message) for c in checks]
    assert all(c.status == "ok" for c in checks)
