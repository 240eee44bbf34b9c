"""RDD and the BEV distillation losses: known answers computed by hand, identities, the region
selection and balanced masks, the method's per-scene decisions, and a `kdw train` smoke run."""
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from kd_engine.errors import ConfigError
from kd_engine.losses import binary_kd
from kd_engine.losses.bev import gaussian_kl, heatmap_focal, masked_binary_kl, masked_feature_mse
from kd_engine.parts.bev_regions import VariationalAdapter, balanced_mask, disparity_map, near, select_regions

ROOT = Path(__file__).resolve().parents[1]


def test_heatmap_focal_hand_value():
    logits = torch.zeros(1, 1, 1, 2)  # p = 0.5 at both cells
    target = torch.tensor([[[[1.0, 0.5]]]])
    # centre: (1 − .5)²·log .5; other: (1 − .5)⁴·.5²·log .5; one centre
    expected = -(0.25 * math.log(0.5) + 0.0625 * 0.25 * math.log(0.5))
    assert heatmap_focal(logits, target, reduction="none").item() == pytest.approx(expected)
    two = torch.cat([logits, logits]), torch.cat([target, torch.zeros_like(target)])
    per = heatmap_focal(*two, reduction="none")
    assert per.shape == (2,) and per[1].item() == pytest.approx(-2 * 0.25 * math.log(0.5))  # no centre: ÷1
    assert heatmap_focal(*two, reduction="sum").item() == pytest.approx(per.sum().item())


def test_masked_feature_mse_hand_value_and_identity():
    s, t = torch.ones(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)
    s[0, 1, 0, 1] = 3.0  # cell (0, 1): mean over channels (1 + 9) / 2 = 5
    mask = torch.tensor([[[0.5, 0.25], [0.25, 0.0]]])
    assert masked_feature_mse(s, t, mask, reduction="none").item() == pytest.approx(0.5 * 1 + 0.25 * 5 + 0.25 * 1)
    assert masked_feature_mse(t, t, mask).item() == 0.0
    with pytest.raises(ValueError, match="mask"):
        masked_feature_mse(s, t, mask[:, :1])


def test_masked_binary_kl_hand_value_and_binary_kd_identity():
    s = torch.full((1, 1, 1, 1), math.log(3.0))  # q = 0.75
    t = torch.zeros(1, 1, 1, 1)  # p = 0.5
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert masked_binary_kl(s, t, torch.ones(1, 1, 1), reduction="none").item() == pytest.approx(expected)
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    uniform = torch.full((3, 5, 5), 1 / 25)
    for T in (1.0, 2.0):  # a full-map mask is K × binary_kd, which also averages over classes
        assert torch.allclose(masked_binary_kl(s, t, uniform, T, reduction="none"),
                              4 * binary_kd(s, t, T, reduction="none"), atol=1e-6)
    assert masked_binary_kl(t, t, uniform).item() == pytest.approx(0.0, abs=1e-7)


def test_gaussian_kl_hand_value():
    mu, logvar = torch.ones(2, 2, 3, 3), torch.zeros(2, 2, 3, 3)
    assert gaussian_kl(mu, logvar, reduction="none").tolist() == pytest.approx([1.0, 1.0])  # ½·Σ_c (1 + 1 − 1 − 0)
    assert gaussian_kl(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)).item() == 0.0
    sigma2 = 2.0
    lv = torch.full((1, 1, 1, 1), math.log(sigma2))
    assert gaussian_kl(torch.zeros(1, 1, 1, 1), lv).item() == pytest.approx(0.5 * (sigma2 - 1 - math.log(sigma2)))


def test_disparity_map_is_one_minus_cosine_of_windows():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 3, 4, 4, generator=g)
    assert torch.allclose(disparity_map(a, a), torch.zeros(2, 4, 4), atol=1e-6)
    assert torch.allclose(disparity_map(a, -a), torch.full((2, 4, 4), 2.0), atol=1e-6)
    b = torch.randn(2, 3, 4, 4, generator=g)
    # window 3 at cell (1, 1): the 3x3 block rows 0..2, cols 0..2, all channels, flattened
    u, v = a[0, :, 0:3, 0:3].flatten(), b[0, :, 0:3, 0:3].flatten()
    expected = 1 - float(u @ v / (u.norm() * v.norm()))
    assert disparity_map(a, b)[0, 1, 1].item() == pytest.approx(expected, abs=1e-5)


def test_selection_and_balanced_mask():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.3, 0.2, 0.8, 0.4, 0.6]])
    candidates = torch.tensor([[True, False, True, True, False, False, True, False, False]]).view(1, 3, 3)
    index, valid = select_regions(scores.view(1, 3, 3), candidates, k=3)
    assert index.tolist() == [[6, 3, 2]] and valid.all()
    index, valid = select_regions(scores.view(1, 3, 3), candidates, k=6)
    assert valid.sum() == 4  # only four candidates
    # window 1: weights on the centres; one foreground region gets 0.5, two background ones 0.25
    idx = torch.tensor([[4, 0, 8]])
    fg = torch.tensor([[True, False, False]])
    m = balanced_mask(idx, torch.ones_like(fg), fg, (3, 3), 0.5, window=1)
    assert m.flatten().tolist() == pytest.approx([0.25, 0, 0, 0, 0.5, 0, 0, 0, 0.25])
    # window 3: a corner region's weight spreads over its 4 cells inside the grid; each scene sums to 1
    m3 = balanced_mask(idx, torch.ones_like(fg), fg, (3, 3), 0.5, window=3)
    assert m3.sum().item() == pytest.approx(1.0) and m3[0, 0, 0].item() == pytest.approx(0.25 / 4 + 0.5 / 9)
    # no background kept: only the foreground share is spent; an invalid region counts for nothing
    none_bg = balanced_mask(idx, torch.tensor([[True, False, False]]), fg, (3, 3), 0.5, window=1)
    assert none_bg.sum().item() == pytest.approx(0.5)
    assert near(torch.tensor([[[0, 0, 0], [0, 0, 0], [0, 0, 1.0]]]), 3)[0].tolist() == [
        [False, False, False], [False, True, True], [False, True, True]]


def test_variational_adapter_samples_in_training_only():
    adapter = VariationalAdapter(4, 8)
    x = torch.randn(2, 4, 3, 3)
    sample, mu, logvar = adapter(x)
    assert sample.shape == mu.shape == logvar.shape == (2, 8, 3, 3) and not torch.equal(sample, mu)
    adapter.eval()
    sample, mu, _ = adapter(x)
    assert torch.equal(sample, mu)


def _cfg(method="rdd", **params):
    return SimpleNamespace(method=method, data=SimpleNamespace(name="bev_scenes"),
                           distill=SimpleNamespace(params=params))


def test_rdd_forward_records_balanced_selection_and_trains_the_adapter():
    from kd_engine.data.bev import build_bev_scenes
    from kd_engine.methods.rdd import RDD
    from kd_engine.models import build_model

    data = build_bev_scenes(SimpleNamespace(name="bev_scenes", params={"n_train": 4, "n_test": 0}), 0)
    torch.manual_seed(0)
    spec = lambda w: SimpleNamespace(name="centerpoint_lite", params={"width": w})  # noqa: E731
    student, teacher = (build_model(spec(w), data.input_shape, 3) for w in (4, 8))
    rdd = RDD(_cfg(top_k=6), student, teacher, data.input_shape)
    tr = data.train
    out = rdd(tr.x, tr.heatmap, reg=tr.reg, reg_mask=tr.reg_mask)
    ps = out.per_sample
    assert (ps["selected_fg"] + ps["selected_bg"]).tolist() == [6.0] * 4
    assert torch.all(ps["disparity_selected"] >= ps["disparity_candidates"] - 1e-6)  # the top-k by disparity
    out.total.backward()
    assert rdd.adapter.logvar.weight.grad is not None and student.stem[0].weight.grad.abs().sum() > 0
    view = rdd.eval().region_view(tr.x, tr.reg_mask)
    assert view["disparity_map"].shape == (4, 16, 16) and view["index"].shape == (4, 6)
    with pytest.raises(ConfigError, match="distill.params.top_k"):
        RDD(_cfg(top_k=0), student, teacher, data.input_shape)
    with pytest.raises(ConfigError, match="data.name"):
        RDD(SimpleNamespace(method="rdd", data=SimpleNamespace(name="digits"), distill=SimpleNamespace(params={})),
            student, teacher, data.input_shape)


SMOKE = {"epochs": 1, "data.params": {"n_train": 24, "n_val": 0, "n_test": 8}, "data.batch_size": 12,
         "teacher.params": {"width": 8}, "teacher.data.params": {"n_train": 24, "n_val": 0, "n_test": 8},
         "teacher.train.epochs": 1, "record.attention_maps": 2, "record.feature_probe_size": 4}


def test_rdd_config_trains_and_records_regions(tmp_path):
    from kd_engine.config import validate
    from kd_engine.experiment import set_key
    from kd_engine.run import train
    from kd_engine.store import open_run

    raw = yaml.safe_load((ROOT / "configs/rdd_bev.yaml").read_text())
    for key, value in SMOKE.items():
        set_key(raw, key, value)
    raw.update(runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"))
    raw["record"]["tensorboard"] = False
    run = open_run(train(validate(raw, "rdd_bev.yaml"), distributed=False))
    assert run.meta()["task"] == "bev" and "test/student_mAP" in run.final_metrics()
    rows = run.instances(split="train")
    assert {"selected_fg", "selected_bg", "disparity_selected", "term_ib"} <= set(rows.columns)
    regions = run.load_artifact("bev/test/regions")
    assert regions.shape[1] == 5 and len(regions) == 2 * 16
    assert run.load_artifact("bev/test/teacher_heatmap").shape == (2, 3, 16, 16)


def test_teacher_memo_returns_what_the_teacher_computes():
    from kd_engine.methods.bev_base import TeacherMemo, bev_forward
    from kd_engine.models import build_model

    torch.manual_seed(0)
    teacher = build_model(SimpleNamespace(name="centerpoint_lite", params={"width": 8}), (3, 32, 32), 3).eval()
    x, ids = torch.rand(4, 3, 32, 32), torch.tensor([7, 3, 9, 1])
    memo = TeacherMemo()
    memo.enable_for(SimpleNamespace(train=SimpleNamespace(augment=None)))
    first = memo(teacher, x, ids, ["neck"])
    assert sorted(memo.outputs) == [1, 3, 7, 9]
    order = torch.tensor([2, 0])  # a later batch: scenes 9 and 7, served from the memo
    again = memo(teacher, torch.zeros(2, 3, 32, 32), ids[order], ["neck"])
    direct = bev_forward(teacher, x[order], ["neck"])
    assert torch.allclose(again[0], direct[0], atol=1e-6) and torch.allclose(again[2]["neck"], direct[2]["neck"], atol=1e-6)
    assert torch.allclose(first[1][order], again[1])
    memo.enable_for(SimpleNamespace(train=SimpleNamespace(augment=lambda b: b)))  # augmented: never reused
    assert memo(teacher, torch.zeros(2, 3, 32, 32), ids[order], ["neck"])[0].abs().sum() != again[0].abs().sum()
