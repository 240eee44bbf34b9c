"""L2D (paper 25): digit mosaics, summed BCE, binary logit KD and label-wise embedding structure."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kd_engine.config import load_raw, validate
from kd_engine.data import build_data
from kd_engine.data.mosaics import make_mosaics, targets_for
from kd_engine.errors import ConfigError
from kd_engine.losses.binary import binary_kd
from kd_engine.losses.multilabel import bce_sum, class_structure, instance_structure, structure_rows
from kd_engine.methods.l2d import L2D
from kd_engine.models import build_model


def test_mosaics_labels_are_the_tiles_classes():
    rng = np.random.default_rng(0)
    images = np.stack([np.full((8, 8), c / 10.0, dtype=np.float32) for c in range(10)])  # class c = value c/10
    x, targets, top_left = make_mosaics(images, np.arange(10), 200, rng)
    for i in range(200):
        tiles = {int(round(x[i, 0, r, c] * 10)) for r in (0, 8) for c in (0, 8)}
        assert set(np.flatnonzero(targets[i])) == tiles
        assert top_left[i] == int(round(x[i, 0, 0, 0] * 10))
    assert set(targets.sum(1).astype(int)) == {1, 2, 3, 4}


def test_mosaic_dataset_splits_and_errors():
    data = build_data(SimpleNamespace(name="digit_mosaics", params={"n_train": 50, "n_val": 10, "n_test": 20}), 0)
    assert (len(data.train), len(data.val), len(data.test)) == (50, 10, 20)
    assert data.input_shape == (1, 16, 16) and targets_for(data, "test").shape == (20, 10)
    top = targets_for(data, "train")[np.arange(50), data.train.y.numpy()]
    assert (top == 1).all()  # the loop's single label is one of the present classes
    with pytest.raises(ConfigError, match="data.params.max_labels"):
        build_data(SimpleNamespace(name="digit_mosaics", params={"max_labels": 5}), 0)
    with pytest.raises(ConfigError, match="unknown parameter 'n'"):
        build_data(SimpleNamespace(name="digit_mosaics", params={"n": 5}), 0)


def test_structure_rows_by_hand():
    s = torch.tensor([[[0.0], [1.0], [3.0]]])  # distances 1, 3, 2; mean 2 -> 0.5, 1.5, 1
    t = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]])  # 1, 2, 1; mean 4/3 -> 0.75, 1.5, 0.75
    rows = structure_rows(s, t, torch.ones(1, 3))
    torch.testing.assert_close(rows, torch.tensor([[0.03125, 0.0625, 0.03125]]))
    # a non-member is left out entirely: only the pair (0, 1) remains, both normalised to 1
    assert structure_rows(s, t, torch.tensor([[1.0, 1.0, 0.0]])).abs().max().item() < 1e-6


def test_structure_is_scale_free_and_safe_for_single_members():
    e = torch.randn(4, 5, 3)
    assert structure_rows(e, 2.5 * e, torch.ones(4, 5)).abs().max().item() < 1e-5
    student = torch.randn(6, 10, 4, requires_grad=True)
    teacher = torch.randn(6, 10, 8)
    targets = torch.zeros(6, 10)
    targets[0, 3] = 1.0  # one positive overall: no group has two members
    assert class_structure(student, teacher, targets).item() == 0.0
    assert instance_structure(student, teacher, targets).item() == 0.0
    targets[1, [2, 5, 7]] = 1.0
    targets[2, 2] = 1.0
    loss = class_structure(student, teacher, targets) + instance_structure(student, teacher, targets)
    loss.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    per = instance_structure(student, teacher, targets, reduction="none")
    assert per[0].item() == 0.0 and per[2].item() == 0.0 and per[1].item() > 0
    manual = structure_rows(student[1:2, [2, 5, 7]], teacher[1:2, [2, 5, 7]], torch.ones(1, 3)).sum()
    torch.testing.assert_close(per[1], manual)
    cd = class_structure(student, teacher, targets, reduction="none")
    manual_cd = structure_rows(student[[1, 2], 2].unsqueeze(0), teacher[[1, 2], 2].unsqueeze(0), torch.ones(1, 2)).sum()
    torch.testing.assert_close(cd.sum(), manual_cd)  # class 2 is the only class with two positives


def test_bce_sum_and_mld_limits():
    assert bce_sum(torch.zeros(3, 10), torch.ones(3, 10)).item() == pytest.approx(10 * math.log(2))
    z = torch.randn(4, 10)
    assert binary_kd(z, z, temperature=1.0).item() == 0.0


def _cfg(tmp_path, **params):
    raw = load_raw("configs/l2d_digits.yaml")
    raw["data"]["params"].update(n_train=96, n_val=16, n_test=16)
    raw["distill"]["params"].update(teacher_epochs=1, **params)
    raw.update(cache_dir=str(tmp_path / "cache"), runs_dir=str(tmp_path / "runs"), threads=1, device="cpu")
    return raw


def test_l2d_forward_combines_the_terms(tmp_path):
    cfg = validate(_cfg(tmp_path, softmax_kd_weight=0.5))
    method = L2D(cfg, build_model(cfg.student, (1, 16, 16), 10), None, (1, 16, 16))
    data = build_data(cfg.data, 0)
    x, ids = data.train.x[:32], data.train.ids[:32]
    out = method(x, data.train.y[:32], ids)
    targets = torch.as_tensor(targets_for(data, "train")[:32])
    torch.testing.assert_close(out.per_sample["n_labels"], targets.sum(1))
    torch.testing.assert_close(out.losses["task"], bce_sum(out.logits, targets))
    with torch.no_grad():
        t_logits = method.ml_teacher(x)
    torch.testing.assert_close(out.teacher_logits, t_logits, atol=1e-5, rtol=1e-5)  # the cache = the teacher
    torch.testing.assert_close(out.losses["mld"], 10.0 * 10 * binary_kd(out.logits, t_logits, 1.0), atol=1e-5, rtol=1e-4)
    assert {"cd", "id", "softmax_kd"} <= set(out.losses)
    out.total.backward()
    assert not any(p.grad is not None for p in method.ml_teacher.parameters())
    method.train()
    assert not method.ml_teacher.training


def test_l2d_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="distill.params: unknown parameter 'beta'"):
        cfg = validate(_cfg(tmp_path, beta=1.0))
        L2D(cfg, build_model(cfg.student, (1, 16, 16), 10), None, (1, 16, 16))
    cfg = validate(_cfg(tmp_path))
    with pytest.raises(ConfigError, match="student.name"):
        L2D(cfg, build_model(SimpleNamespace(name="mlp", params={}), (1, 16, 16), 10), None, (1, 16, 16))
    raw = _cfg(tmp_path)
    raw["data"] = {"name": "digits"}
    cfg = validate(raw)
    with pytest.raises(ConfigError, match="data.name"):
        L2D(cfg, build_model(cfg.student, (1, 8, 8), 10), None, (1, 8, 8))


def test_l2d_trains_from_its_config_and_records(tmp_path):
    from kd_engine.store import open_run
    from kd_engine.run import train

    raw = _cfg(tmp_path)
    raw["epochs"] = 1
    run = open_run(train(validate(raw), distributed=False))
    assert run.status() == "finished"
    rows = run.instances(split="train")
    assert {"bce", "mld", "cd", "id", "n_labels", "teacher_bce"} <= set(rows.columns) and len(rows) == 96
