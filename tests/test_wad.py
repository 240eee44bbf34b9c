"""WAD (paper 21): mismatch digits, SimCLR teacher, exemplar-similarity pseudo-labels, margin weights."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kd_engine.config import load_raw, validate
from kd_engine.data import build_data
from kd_engine.errors import ConfigError, DataError
from kd_engine.losses.contrastive import nt_xent
from kd_engine.methods.wad import WAD, exemplar_similarity, margin_pseudo_labels, promotion_count
from kd_engine.models import build_model


def _data(**params):
    return build_data(SimpleNamespace(name="digits_mismatch", params=params), 0)


def test_mismatch_split_counts_and_hidden_truth():
    data = _data(mismatch=0.6, unlabelled_known=100)
    truth = {k: np.asarray(v) for k, v in data.meta["truth"].items()}
    assert torch.equal(torch.as_tensor(truth["instance_id"]), data.train.ids)
    y = data.train.y.numpy()
    assert (y >= 0).sum() == 50 and np.bincount(y[y >= 0]).tolist() == [10] * 5
    unl = y < 0
    assert (truth["known"][unl] == 1).sum() == 100
    assert (truth["known"][unl] == 0).sum() == math.ceil(0.6 * 100 / 0.4) == 150
    assert set(truth["digit"][truth["known"] == 0]) <= {5, 6, 7, 8, 9}
    assert data.num_classes == 5 and data.test.y.max() <= 4 and data.val.y.max() <= 4
    with pytest.raises(DataError, match="mismatch"):
        _data(mismatch=0.9)
    with pytest.raises(ConfigError, match="data.params.mismatch"):
        _data(mismatch=1.0)


def test_nt_xent_known_values():
    # orthogonal, well-separated pairs at small τ: loss → 0; identical views of one pair: log(2B−1) at τ → ∞ limit
    z = torch.eye(4)
    assert nt_xent(z, z, temperature=0.01).item() < 1e-6
    zero = torch.zeros(3, 2) + torch.tensor([1.0, 0.0])  # all views identical: every logit equal
    assert nt_xent(zero, zero, 0.5).item() == pytest.approx(math.log(5), abs=1e-6)
    per = nt_xent(torch.randn(6, 3), torch.randn(6, 3), 0.5, reduction="none")
    assert per.shape == (6,)


def test_exemplar_similarity_and_margin_by_hand():
    e = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)  # exemplars: class 0, 1, 1
    x = F.normalize(torch.tensor([[1.0, 0.2], [0.0, 1.0]]), dim=1)
    sim = exemplar_similarity(torch.stack([x, x]), torch.stack([e, e]), torch.tensor([0, 1, 1]), 3)
    c0 = (x @ e[0]).tolist()
    c1 = torch.maximum(x @ e[1], x @ e[2]).tolist()
    torch.testing.assert_close(sim[:, 0], 2 * torch.tensor(c0))
    torch.testing.assert_close(sim[:, 1], 2 * torch.tensor(c1))
    assert sim[:, 2].tolist() == [-2.0, -2.0]  # no exemplars: below anything attainable
    pseudo, w = margin_pseudo_labels(sim)
    assert pseudo.tolist() == [0, 1]
    torch.testing.assert_close(w, (sim.max(1).values - sim.topk(2, 1).values[:, 1]))
    assert (w >= 0).all()


def test_promotion_schedule():
    assert [promotion_count(r, 4, 0.1, 2.0, 900) for r in range(4)] == [0, 90, 40, 10]
    assert promotion_count(1, 1, 0.1, 2.0, 900) == 0


def _method(tmp_path, **params):
    raw = load_raw("configs/wad_digits.yaml")
    raw["distill"]["params"].update(simclr_epochs=5, **params)
    raw["cache_dir"] = str(tmp_path / "cache")
    cfg = validate(raw)
    return WAD(cfg, build_model(cfg.student, (1, 8, 8), 5), None, (1, 8, 8)), cfg


def test_wad_weights_pseudo_labels_and_rounds(tmp_path):
    method, _ = _method(tmp_path, rounds=4)
    unl = ~method.labelled
    assert int(unl.sum()) == method.pool_size and method.wad_weight[~unl].eq(0).all()
    assert (method.wad_weight[unl] >= 0).all() and method.targets.max() <= 4
    train = build_data(SimpleNamespace(name="digits_mismatch", params={"mismatch": 0.3}), 0).train
    ids = train.ids[:20]
    out = method(train.x[:20], train.y[:20], ids)
    lab = train.y[:20] >= 0
    assert out.per_sample["weight"][lab].eq(1).all()
    torch.testing.assert_close(out.per_sample["weight"][~lab], method.wad_weight[:20][~lab])
    assert out.per_sample["known_truth"].tolist() == [float(d < 5) for d in
                                                      np.asarray(train_digits(ids))]
    out.total.backward()
    before = int(method.labelled.sum())
    method.begin_epoch(10, 40)  # round 1 of 4: promote round(0.1 * |U0|)
    assert int(method.labelled.sum()) == before + promotion_count(1, 4, 0.1, 2.0, method.pool_size)
    assert int((method.promoted == 1).sum()) == promotion_count(1, 4, 0.1, 2.0, method.pool_size)
    method.begin_epoch(10, 40)  # the same round again: nothing more
    assert int((method.promoted > 0).sum()) == promotion_count(1, 4, 0.1, 2.0, method.pool_size)


def train_digits(ids):
    from kd_engine.data.digits import _load

    return _load()[1][ids.numpy()]


def test_supervised_and_uniform_controls(tmp_path):
    none, _ = _method(tmp_path, weighting="none")
    uniform, _ = _method(tmp_path, weighting="uniform")
    pos = torch.nonzero(~none.labelled).squeeze(1)[:5]
    assert none.used_weights(pos).tolist() == [0.0] * 5
    assert uniform.used_weights(pos).tolist() == [1.0] * 5
    torch.testing.assert_close(none.feats, uniform.feats)  # the SimCLR teacher came from the cache


def test_wad_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="distill.params.weighting"):
        _method(tmp_path, weighting="margin")
    with pytest.raises(ConfigError, match="distill.params: unknown parameter 'tau'"):
        _method(tmp_path, tau=0.5)
    raw = load_raw("configs/wad_digits.yaml")
    raw["data"] = {"name": "digits"}
    cfg = validate(raw)
    with pytest.raises(ConfigError, match="data.name"):
        WAD(cfg, build_model(cfg.student, (1, 8, 8), 10), None, (1, 8, 8))


def test_wad_trains_from_its_config_and_records(tmp_path):
    from kd_engine.store import open_run
    from kd_engine.run import train

    raw = load_raw("configs/wad_digits.yaml")
    raw["distill"]["params"].update(simclr_epochs=5, rounds=2)
    raw.update(epochs=2, threads=1, device="cpu", runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "c"))
    run = open_run(train(validate(raw), distributed=False))
    assert run.status() == "finished"
    rows = run.instances(split="train")
    assert {"weight", "wad_weight", "pseudo_label", "known_truth", "promoted", "labelled"} <= set(rows.columns)
    assert (rows[rows["epoch"] == 1]["promoted"] == 1).sum() > 0
