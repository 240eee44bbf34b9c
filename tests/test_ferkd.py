"""FerKD (paper 15): the calibration rule on hand-built confidences, SelfMix on a hand-built
batch, the soft cross-entropy, config errors, and what a run records per instance."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kd_engine.config import validate
from kd_engine.errors import ConfigError
from kd_engine.methods.ferkd import (calibration_mask, cutmix_boxes, self_mix, smoothed_onehot,
                                     soft_cross_entropy)
from kd_engine.store import open_run

FERKD = {"method": "ferkd", "use_teacher_bank": True, "teacher_bank.views": 4, "distill.terms": [],
         "distill.task_weight": 0.0}


def test_calibration_rule_on_hand_built_confidences():
    conf = torch.tensor([[0.90, 0.15, 0.50, 0.60, 0.70, 0.80, 0.95, 0.30],   # 0.15 < τ; bottom 2: 0.15, 0.30
                         [0.50, 0.50, 0.90, 0.90, 0.90, 0.90, 0.90, 0.90],   # tie in the bottom: both 0.50
                         [0.05, 0.10, 0.12, 0.19, 0.99, 0.98, 0.97, 0.96]])  # four below τ
    mask = calibration_mask(conf, tau_low=0.2, bottom_frac=0.25)
    assert mask.tolist() == [[False, True, False, False, False, False, False, True],
                             [True, True, False, False, False, False, False, False],
                             [True, True, True, True, False, False, False, False]]
    # bottom_frac 0: only the threshold; τ 0: only the bottom fraction; ties broken by index
    assert calibration_mask(conf, 0.2, 0.0).sum(1).tolist() == [1, 0, 4]
    ties = calibration_mask(torch.full((1, 8), 0.5), 0.0, 0.25)
    assert ties.tolist() == [[True, True, False, False, False, False, False, False]]


def test_smoothed_onehot_and_soft_cross_entropy():
    target = smoothed_onehot(torch.tensor([2]), 4, 0.1)
    torch.testing.assert_close(target, torch.tensor([[0.025, 0.025, 0.925, 0.025]]))
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]])
    hard = F.one_hot(torch.tensor([1, 2]), 3).float()
    torch.testing.assert_close(soft_cross_entropy(logits, hard, "none"),
                               F.cross_entropy(logits, torch.tensor([1, 2]), reduction="none"))
    uniform = torch.full((2, 3), 1 / 3)
    expected = -(F.log_softmax(logits, 1).mean(1))
    torch.testing.assert_close(soft_cross_entropy(logits, uniform, "none"), expected)
    assert soft_cross_entropy(logits, uniform, "sum").item() == pytest.approx(expected.sum().item())


def test_selfmix_on_a_hand_built_batch():
    xa, xb = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    ta, tb = torch.tensor([[1.0, 0.0], [0.6, 0.4]]), torch.tensor([[0.0, 1.0], [0.2, 0.8]])
    boxes = torch.tensor([[0, 0, 2, 2], [1, 1, 1, 3]])  # a 2x2 corner (λ = 12/16); an empty box (λ = 1)
    x, t, lam = self_mix(xa, xb, ta, tb, boxes)
    assert x[0, 0].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert torch.equal(x[1], xa[1])
    torch.testing.assert_close(lam, torch.tensor([0.75, 1.0]))
    torch.testing.assert_close(t, torch.tensor([[0.75, 0.25], [0.6, 0.4]]))
    torch.testing.assert_close(t.sum(1), torch.ones(2))
    # CutMix boxes: area (1 - λ)·H·W for a centred box, λ = 1 gives an empty box
    b = cutmix_boxes(torch.tensor([0.75, 1.0]), torch.tensor([4.0, 4.0]), torch.tensor([4.0, 4.0]), 8, 8)
    assert b.tolist()[0] == [2, 2, 6, 6] and (b[1, 2] - b[1, 0]) * (b[1, 3] - b[1, 1]) == 0


def test_ferkd_config_errors(make_raw):
    from kd_engine.run import train

    cases = [({**FERKD, "use_teacher_bank": False}, "use_teacher_bank: method ferkd trains on the teacher bank"),
             ({**FERKD, "distill.terms": [{"loss": "kd"}]}, "distill.terms: method ferkd has its own loss"),
             ({**FERKD, "distill.params": {"tau": 0.2}}, "distill.params: unknown parameter 'tau'"),
             ({**FERKD, "distill.params": {"tau_low": 1.5}}, r"distill.params.tau_low: expected a number in \[0, 1\]"),
             ({**FERKD, "distill.params": {"labels": "soft"}}, "distill.params.labels: expected one of 'teacher', 'hard'"),
             ({**FERKD, "distill.params": {"selfmix_alpha": 0}}, "distill.params.selfmix_alpha")]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message) as err:
            train(validate(make_raw(overrides)), distributed=False)
        assert "\n" not in str(err.value)


def test_ferkd_run_records_view_confidence_and_relabelling(make_raw):
    from kd_engine.teacher_bank import TeacherBank, bank_dir
    from kd_engine.data import build_data
    from kd_engine.run import train

    raw = make_raw({**FERKD, "epochs": 2, "optimizer": {"name": "adam", "lr": 0.001, "weight_decay": 0.0},
                    "distill.params": {"tau_low": 0.3, "bottom_frac": 0.25, "selfmix": 0.5}})
    cfg = validate(raw)
    run = open_run(train(cfg, distributed=False))
    assert run.status() == "finished"
    rows = run.instances(split="train", columns=["instance_id", "epoch", "bank_view", "bank_conf_y", "calibrated",
                                                 "weight", "mix_lam", "mix_view", "teacher_conf"])
    data = build_data(cfg.data, cfg.seed)
    bank = TeacherBank(bank_dir(cfg), data.train)
    conf = bank.target_probs()
    expected = calibration_mask(conf, 0.3, 0.25)
    r = bank.rows(torch.tensor(rows.instance_id.to_numpy()))
    v = torch.tensor(rows.bank_view.to_numpy()).long()
    np.testing.assert_allclose(rows.bank_conf_y, conf[r, v].numpy(), rtol=1e-5)
    assert rows.calibrated.astype(bool).tolist() == expected[r, v].tolist()
    assert 0 < rows.calibrated.mean() < 1 and (rows.weight == 1).all()
    mixed = rows.mix_view >= 0
    assert 0.2 < mixed.mean() < 0.8 and (rows.mix_lam[~mixed] == 1).all() and (rows.mix_lam[mixed] < 1).all()
    assert (rows.mix_view[mixed] != rows.bank_view[mixed]).all()
    assert np.isfinite(run.final_metrics()["test/student_acc"])


def test_hard_labels_record_no_relabelling(make_raw):
    from kd_engine.run import train

    raw = make_raw({**FERKD, "epochs": 1, "distill.params": {"labels": "hard"}})
    rows = open_run(train(validate(raw), distributed=False)).instances(split="train", columns=["calibrated"])
    assert (rows.calibrated == 0).all()


def test_ferkd_with_selfmix_resumes_to_identical_weights(make_raw, tmp_path, monkeypatch):
    """The view draw depends only on (seed, epoch) and SelfMix's draws on the checkpointed torch
    RNG, so a run stopped after epoch 1 and resumed ends with the uninterrupted run's weights."""
    from safetensors.torch import load_file

    from kd_engine.run import train
    from conftest import stop_after_epoch
    from kd_engine.trainer import StopRequested, Trainer

    raw = make_raw({**FERKD, "epochs": 3, "data.batch_size": 128, "distill.params": {"selfmix": 0.5}})
    reference = train(validate(raw), distributed=False)
    resume_normally = stop_after_epoch(monkeypatch, Trainer, "_end_of_epoch", 0)
    with pytest.raises(StopRequested):
        train(validate({**raw, "runs_dir": str(tmp_path / "victim")}), distributed=False)
    resume_normally()
    (victim,) = [p for p in (tmp_path / "victim").iterdir() if (p / "store.sqlite").is_file()]
    resumed = train(None, resume=victim, distributed=False)
    a = load_file(str(reference / "checkpoints" / "student.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "student.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    views = [open_run(d).instances(split="train", columns=["epoch", "instance_id", "bank_view", "mix_lam"])
             .sort_values(["epoch", "instance_id"]).reset_index(drop=True) for d in (reference, resumed)]
    assert views[0].equals(views[1])
