"""MDCS (paper 16): long-tailed digits, logit-adjusted experts, CIS-masked consistency KL."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kd_engine.config import load_raw, validate
from kd_engine.data import build_data
from kd_engine.data.augment import cutout, random_contrast, random_shift
from kd_engine.data.digits_longtail import longtail_counts, shot_groups
from kd_engine.errors import ConfigError
from kd_engine.losses.longtail import log_prior, logit_adjusted_ce
from kd_engine.methods.mdcs import MDCS, cis_mask, consistency_terms
from kd_engine.models import build_model


def _data(**params):
    return build_data(SimpleNamespace(name="digits_longtail", params=params), 0)


def test_longtail_counts_follow_the_formula():
    assert longtail_counts(10, 100, 20) == [100, 72, 51, 37, 26, 19, 14, 10, 7, 5]
    assert longtail_counts(10, 50, 1) == [50] * 10
    assert shot_groups(10) == {"many": [0, 1, 2], "medium": [3, 4, 5, 6], "few": [7, 8, 9]}


def test_longtail_splits_are_long_tailed_balanced_and_disjoint():
    data = _data()
    assert np.bincount(data.train.y.numpy()).tolist() == longtail_counts(10, 100, 20)
    val, test = np.bincount(data.val.y.numpy()), np.bincount(data.test.y.numpy())
    assert set(val.tolist()) == {15} and len(set(test.tolist())) == 1 and test[0] > 50
    ids = [set(s.ids.tolist()) for s in (data.train, data.val, data.test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    again = _data()
    assert torch.equal(again.train.ids, data.train.ids)  # fixed by the split seed
    assert np.bincount(_data(imbalance=10).train.y.numpy())[-1] == 10


def test_longtail_bad_params_name_the_field():
    with pytest.raises(ConfigError, match="data.params: unknown parameter 'ratio'"):
        _data(ratio=10)
    with pytest.raises(ConfigError, match="data.params.imbalance"):
        _data(imbalance=0.5)


def test_logit_adjusted_ce_known_values():
    logits, y = torch.zeros(1, 2), torch.tensor([1])
    prior = log_prior([80, 20])
    assert logit_adjusted_ce(logits, y, prior, lam=1.0).item() == pytest.approx(-math.log(0.2), abs=1e-6)
    # λ = 0, or a uniform prior, is plain CE
    z = torch.randn(5, 4)
    t = torch.randint(0, 4, (5,))
    ce = F.cross_entropy(z, t, reduction="none")
    torch.testing.assert_close(logit_adjusted_ce(z, t, log_prior([3, 9, 1, 5]), 0.0, reduction="none"), ce)
    torch.testing.assert_close(logit_adjusted_ce(z, t, log_prior([7] * 4), 2.5, reduction="none"), ce)
    # log counts and log π differ by a constant: the same loss
    counts = torch.tensor([3.0, 9.0, 1.0, 5.0])
    torch.testing.assert_close(logit_adjusted_ce(z, t, counts.log(), 1.0), logit_adjusted_ce(z, t, log_prior(counts), 1.0))


def test_cis_mask_and_consistency_terms():
    weak = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[0.0, 3.0], [0.0, 1.0]]])  # (E=2, B=2, C=2)
    y = torch.tensor([0, 1])
    assert cis_mask(weak, y).tolist() == [[1.0, 1.0], [0.0, 1.0]]
    assert consistency_terms(weak, weak, 1.0).abs().max().item() == 0.0
    strong = torch.randn(2, 2, 2)
    p = weak.softmax(-1)
    manual = (p * (p.log() - strong.log_softmax(-1))).sum(-1)
    torch.testing.assert_close(consistency_terms(strong, weak, 1.0), manual)
    strong.requires_grad_(True)
    weak = weak.clone().requires_grad_(True)
    consistency_terms(strong, weak, 1.0).sum().backward()
    assert weak.grad is None and strong.grad.abs().sum() > 0  # the weak target is detached


def test_augmentations_limits():
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(random_shift(x, 0), x)
    centred = F.pad(torch.rand(4, 1, 6, 6), (1, 1, 1, 1))  # zero border: a 1 px shift keeps every pixel
    torch.testing.assert_close(random_shift(centred, 1).sum((1, 2, 3)), centred.sum((1, 2, 3)))
    assert (cutout(torch.ones(4, 1, 8, 8), 3) == 0).sum((1, 2, 3)).tolist() == [9] * 4
    assert torch.equal(random_contrast(x, 1.0, 1.0), x)


def test_experts_model_averages_its_experts():
    model = build_model(SimpleNamespace(name="experts", params={"experts": 3, "scale": 15.0}), (1, 8, 8), 10)
    x = torch.rand(5, 1, 8, 8)
    per_expert = model.expert_logits(x)
    assert per_expert.shape == (3, 5, 10) and per_expert.abs().max() <= 15.0 + 1e-4
    torch.testing.assert_close(model(x), per_expert.mean(0))


def _cfg(**params):
    raw = load_raw("configs/mdcs_digits.yaml")
    raw["distill"]["params"].update(params)
    return validate(raw)


def _method(cfg):
    student = build_model(cfg.student, (1, 8, 8), 10)
    return MDCS(cfg, student, None, (1, 8, 8))


def test_mdcs_forward_records_and_ramps():
    method = _method(_cfg())
    counts = torch.tensor(longtail_counts(10, 100, 20), dtype=torch.float32)
    torch.testing.assert_close(method.prior_log, (counts / counts.sum()).log())
    method.begin_epoch(4, 60)
    assert method.consistency_weight == pytest.approx(0.6 * 0.5)
    method.begin_epoch(30, 60)
    assert method.consistency_weight == pytest.approx(0.6)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    out = method(x, y)
    keep = sum(out.per_sample[f"confident_e{i}"] for i in range(3))
    torch.testing.assert_close(out.per_sample["keep_count"], keep)
    torch.testing.assert_close(out.per_sample["weight"], 0.6 * keep / 3)
    assert set(out.per_sample["expert"].tolist()) <= {0.0, 1.0, 2.0}
    torch.testing.assert_close(out.losses["consistency"], 0.6 * out.per_sample["consistency"].mean())
    out.total.backward()


def test_mdcs_without_cis_keeps_everything_and_zero_weight_has_no_consistency():
    method = _method(_cfg(cis=False))
    method.begin_epoch(20, 60)
    out = method(torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    assert out.per_sample["keep_count"].tolist() == [3.0] * 8
    method = _method(_cfg(kl_weight=0.0))
    method.begin_epoch(20, 60)
    out = method(torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    assert out.losses["consistency"].item() == 0.0


def test_mdcs_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="distill.params.lambdas"):
        _method(_cfg(lambdas=[0.0, 1.0]))
    with pytest.raises(ConfigError, match="distill.params: unknown parameter 'tau'"):
        _method(_cfg(tau=2.0))
    with pytest.raises(ConfigError, match="distill.params.cis"):
        _method(_cfg(cis="yes"))
    cfg = _cfg()
    with pytest.raises(ConfigError, match="student.name"):
        MDCS(cfg, build_model(SimpleNamespace(name="mlp", params={}), (1, 8, 8), 10), None, (1, 8, 8))


def test_mdcs_trains_from_its_config_and_records_cis(tmp_path):
    from kd_engine.store import open_run
    from kd_engine.run import train

    raw = load_raw("configs/mdcs_digits.yaml")
    raw.update(epochs=1, threads=1, device="cpu", runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "c"))
    run = open_run(train(validate(raw), distributed=False))
    assert run.status() == "finished"
    rows = run.instances(split="train")
    assert {"confident_e0", "confident_e2", "expert", "weight", "keep_count"} <= set(rows.columns)
    assert len(rows) == 341 and rows["confident_e1"].isin([0.0, 1.0]).all()
