"""KD³ (paper 12, a reconstruction): selection scores, alignment, MixDistribution, InfoNCE, the
web pool generator and the teacher's own training data."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kd_engine.cache import teacher_identity, teacher_training_config
from kd_engine.config import DataConfig, load_config
from kd_engine.data import build_data
from kd_engine.errors import ConfigError
from kd_engine.losses.kd3 import (classifier_alignment, info_nce, mix_distribution, selection_scores,
                                  top_fraction)


def test_selection_scores_known_answers():
    t = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]))
    s = torch.log(torch.tensor([[0.5, 0.4, 0.1], [0.1, 0.2, 0.7]]))
    score, conf = selection_scores(t, None)                      # teacher-only: c = max p_T
    assert torch.allclose(score, torch.tensor([0.7, 0.6])) and torch.equal(score, conf)
    score, conf = selection_scores(t, s)
    # row 0: p̄ = [0.6, 0.3, 0.1], agree -> 0.6; row 1: p̄ = [0.1, 0.4, 0.5], disagree -> 0.5 * 0.5
    assert torch.allclose(conf, torch.tensor([0.6, 0.5])) and torch.allclose(score, torch.tensor([0.6, 0.25]))


def test_top_fraction_keeps_the_ceiling_count():
    score = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7])
    assert top_fraction(score, 0.3).tolist() == [False, True, False, False, True]   # ceil(1.5) = 2
    assert top_fraction(score, 0.01).sum() == 1 and top_fraction(score, 1.0).all()


def test_classifier_alignment_zero_when_mapped_classifier_matches():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 0.0]])  # A: 2-d student -> 4-d teacher
    w_s = torch.tensor([[1.0, -1.0], [0.5, 2.0], [0.0, 1.0]])
    w_t = w_s @ torch.linalg.pinv(a)
    assert classifier_alignment(w_s, a, w_t).item() == pytest.approx(0.0, abs=1e-10)
    assert classifier_alignment(w_s, a, w_t + 1.0).item() == pytest.approx(1.0, rel=1e-5)


def test_mix_distribution_limits():
    torch.manual_seed(0)
    f = torch.randn(3, 2, 4, 4) * torch.tensor([1.0, 3.0]).view(1, 2, 1, 1) + 5
    perm = torch.tensor([2, 0, 1])
    assert torch.allclose(mix_distribution(f, perm, torch.ones(3)), f, atol=1e-4)   # λ = 1: unchanged
    out = mix_distribution(f, perm, torch.zeros(3))                                # λ = 0: j's statistics
    assert torch.allclose(out.mean((2, 3)), f[perm].mean((2, 3)), atol=1e-4)
    assert torch.allclose(out.std((2, 3), unbiased=False), f[perm].std((2, 3), unbiased=False), atol=1e-3)


def test_info_nce_known_answer():
    z = torch.eye(2)
    tau = 0.5
    assert info_nce(z, z, tau).item() == pytest.approx(math.log(1 + math.exp(-1 / tau)), rel=1e-6)
    assert info_nce(z, z.flip(0), tau).item() == pytest.approx(math.log(1 + math.exp(1 / tau)), rel=1e-6)


def _data(part="web", **params):
    return build_data(DataConfig(name="digits_web", params={"part": part, **params}), 3)


def test_web_pool_is_disjoint_seeded_and_as_specified():
    web = _data(pool_size=400, digit_fraction=0.4, stroke_fraction=0.3)
    clean = _data("clean")
    kinds = np.array(web.meta["kind"])
    assert len(web.train) == 400 and np.bincount(kinds).tolist() == [160, 120, 120]
    y = web.train.y.numpy()
    assert (y[kinds != 0] == -1).all() and (y[kinds == 0] >= 0).all()
    assert np.array_equal(np.array(web.meta["in_distribution"]), kinds == 0)
    test_ids = set(web.test.ids.tolist())
    assert test_ids == set(clean.test.ids.tolist())                 # the same test digits for both parts
    assert not test_ids & set(clean.train.ids.tolist())             # teacher never trains on test images
    assert not test_ids & set(web.train.ids.tolist())               # pool ids are their own
    assert len(clean.train) == 800 and abs(len(web.test) - 497) <= 2
    again = _data(pool_size=400, digit_fraction=0.4, stroke_fraction=0.3)
    assert torch.equal(again.train.x, web.train.x)                  # a pure function of the seed
    with pytest.raises(ConfigError, match=r"data.params: unknown parameter .size."):
        _data(size=3)


def test_teacher_trains_on_teacher_data():
    cfg = load_config("configs/kd3_digits.yaml")
    tcfg = teacher_training_config(cfg)
    assert tcfg.data.name == "digits_web" and tcfg.data.params["part"] == "clean"
    assert teacher_identity(cfg)["data"]["params"] == {"part": "clean"}


def _cfg(tmp_path, *extra):
    return load_config("configs/kd3_digits.yaml",
                       ["epochs=2", "threads=1", "device=cpu", f"runs_dir={tmp_path}/runs",
                        f"cache_dir={tmp_path}/cache", "data.params.pool_size=200",
                        "teacher.train.epochs=2", "distill.params.warmup_epochs=1",
                        "record.eval_instances=false", *extra])


def test_bad_selection_is_a_config_error(tmp_path):
    from kd_engine.run import train

    with pytest.raises(ConfigError, match=r"distill.params.selection"):
        train(_cfg(tmp_path, "distill.params.selection=best"), distributed=False)


def test_kd3_trains_and_records_decisions(tmp_path):
    from kd_engine.store import open_run
    from kd_engine.run import train

    run = open_run(train(_cfg(tmp_path), distributed=False))
    inst = run.instances(split="train")
    for col in ("score", "confidence", "selected", "weight", "in_distribution"):
        assert col in inst
    frac = inst.groupby("epoch")["selected"].mean()     # rho: 0.3 at epoch 0, 0.8 at the last
    assert frac.loc[0] == pytest.approx(0.3, abs=0.05) and frac.loc[1] == pytest.approx(0.8, abs=0.05)
    assert (inst.loc[inst["selected"] == 0, "weight"] == 0).all()
    assert inst["in_distribution"].mean() == pytest.approx(0.4, abs=1e-9)
    keys = set(run.scalars()["key"])
    assert {"train/distill", "train/feat", "train/cls", "train/mix", "train/selection_precision"} <= keys

    everything = open_run(train(_cfg(tmp_path, "distill.params.selection=all", "distill.params.align=false",
                                     "distill.params.mix=false"), distributed=False))
    inst = everything.instances(split="train")
    assert (inst["selected"] == 1).all() and (inst["weight"] == 1).all()
