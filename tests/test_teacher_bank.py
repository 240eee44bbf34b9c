"""The teacher soft-label bank (FKD's cache, used by FerKD, paper 15): reproducible views, exact crop replay,
memmap round trip, stale/corrupt files refused, and a cached run that never touches the teacher."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kd_engine.config import TeacherBankConfig, validate
from kd_engine.data.base import TensorInstanceDataset
from kd_engine.errors import CheckpointError, ConfigError, DataError
from kd_engine.store import open_run
from kd_engine.checks import check_teacher_bank
from kd_engine.teacher_bank import (TeacherBank, apply_views, bank_dir, quantize_topk,
                                    sample_views, write_bank)

CACHE = {"use_teacher_bank": True, "teacher_bank.views": 4}


def test_same_seed_same_views_and_the_global_rng_is_untouched():
    settings = TeacherBankConfig(views=6)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = sample_views(20, 6, 8, 8, settings, seed=5)
    after = torch.rand(3)
    b = sample_views(20, 6, 8, 8, settings, seed=5)
    c = sample_views(20, 6, 8, 8, settings, seed=6)
    assert torch.equal(before, after)
    assert a.shape == (20, 6, 5) and a.dtype == np.int32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    top, left, h, w, flip = np.moveaxis(a, -1, 0)
    assert (h >= 1).all() and (w >= 1).all() and (top + h <= 8).all() and (left + w <= 8).all()
    assert set(np.unique(flip)) <= {0, 1} and 0 < flip.mean() < 1


def test_apply_views_identity_flip_and_bilinear_resize():
    torch.manual_seed(0)
    x = torch.rand(3, 2, 8, 8)
    full = torch.tensor([[0, 0, 8, 8, 0], [0, 0, 8, 8, 1], [2, 1, 4, 5, 0]], dtype=torch.int32)
    out = apply_views(x, full)
    torch.testing.assert_close(out[0], x[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1], x[1].flip(-1), atol=1e-6, rtol=0)
    # the box (top 2, left 1, 4 x 5) sampled bilinearly at the 8 x 8 output pixel centres
    ys, xs = 2 + (torch.arange(8) + 0.5) * 4 / 8 - 0.5, 1 + (torch.arange(8) + 0.5) * 5 / 8 - 0.5
    grid = torch.stack(torch.meshgrid((xs + 0.5) / 4 - 1, (ys + 0.5) / 4 - 1, indexing="xy"), dim=-1)
    expected = F.grid_sample(x[2:3], grid[None], mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(out[2:3], expected, atol=1e-5, rtol=0)
    # inside the crop it is F.interpolate of the cropped pixels (the edges also see the neighbours)
    cropped = F.interpolate(x[2:3, :, 2:6, 1:6], size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[2:3, :, 1:7, 1:7], cropped[..., 1:7, 1:7], atol=1e-5, rtol=0)


def test_quantize_topk_keeps_the_top_and_spreads_the_rest():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]]))
    q = quantize_topk(logits, 2).exp()
    torch.testing.assert_close(q, torch.tensor([[0.5, 0.3, 0.2 / 3, 0.2 / 3, 0.2 / 3]]))
    torch.testing.assert_close(quantize_topk(logits, 5).exp(), logits.exp())


def _tiny_split(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorInstanceDataset(torch.rand(n, 1, 8, 8, generator=g), torch.arange(n) % 3,
                                 torch.arange(100, 100 + n))


def _bank(tmp_path, train=None, views=3):
    raw = {"student": {"name": "mlp"}, "teacher": {"name": "mlp", "checkpoint": None},
           "use_teacher_bank": True, "teacher_bank": {"views": views, "batch_size": 5},
           "cache_dir": str(tmp_path / "cache")}
    cfg = validate(raw)
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    train = train or _tiny_split()
    directory = bank_dir(cfg)
    directory.parent.mkdir(parents=True)
    write_bank(directory, teacher, train, cfg, "cpu")
    return cfg, teacher, train, directory


def test_memmap_round_trip_replays_the_teacher_bit_for_bit(tmp_path):
    cfg, teacher, train, directory = _bank(tmp_path)
    bank = TeacherBank(directory, train)
    assert isinstance(bank.logits, np.memmap) and not bank.logits.flags.writeable
    assert bank.logits.shape == (12, 3, 3) and bank.views.shape == (12, 3, 5)
    rows = bank.rows(torch.tensor([107, 100, 111]))
    assert rows.tolist() == [7, 0, 11]
    views = torch.tensor([2, 0, 1])
    params, logits = bank.lookup(rows, views)
    with torch.no_grad():  # the golden test: replaying a stored crop reproduces the stored output
        replay = teacher(apply_views(train.x[rows], params))
    torch.testing.assert_close(logits, replay, atol=1e-6, rtol=1e-6)
    assert torch.equal(params, torch.from_numpy(np.asarray(bank.views[[7, 0, 11], [2, 0, 1]])))
    # the view draw is a function of (seed, epoch) only; the two SelfMix views differ
    a, b = bank.draw(rows, 0, 3, count=2), bank.draw(rows, 0, 3, count=2)
    assert torch.equal(a, b) and (a[:, 0] != a[:, 1]).all()
    assert TeacherBank(directory, train).draw(rows, 0, 3, count=2).tolist() == a.tolist()


def test_precut_crops_replay_exactly_what_cropping_each_batch_gives(tmp_path):
    """The fast path (every stored crop cut once, a step only indexes) must hand the distiller the
    same pixels, logits and views as cropping the batch, epoch after epoch."""
    from kd_engine.teacher_bank import BankDistiller, ReplayTeacher

    _, _, train, directory = _bank(tmp_path)
    bank = TeacherBank(directory, train)
    inner = nn.Module()
    inner.teacher = ReplayTeacher()
    batch = torch.tensor([5, 0, 11, 3])
    x, ids = train.x[batch], train.ids[batch]
    cutting, precut = BankDistiller(inner, bank, seed=7), BankDistiller(inner, bank, seed=7, images=train.x)
    assert cutting.crops is None and precut.crops.shape == (12, 3, 1, 8, 8)
    for epoch in (0, 1, 5):
        cutting.epoch = precut.epoch = epoch
        for a, b in zip(cutting.replay(x, ids), precut.replay(x, ids)):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_corrupt_and_stale_banks_are_refused_in_one_line(tmp_path):
    cfg, teacher, train, directory = _bank(tmp_path)
    other = _tiny_split(n=11)
    with pytest.raises(DataError, match=r"ids\.npy: the teacher bank was built for other"):
        TeacherBank(directory, other)
    data = bytearray((directory / "logits.npy").read_bytes())
    data[-3] ^= 0xFF
    (directory / "logits.npy").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"logits\.npy: teacher bank file is missing or corrupt") as err:
        TeacherBank(directory, train)
    assert "\n" not in str(err.value)
    (directory / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"meta\.json: teacher bank metadata is unreadable"):
        TeacherBank(directory, train)


def test_bank_key_changes_with_views_teacher_and_split(make_raw):
    base = validate(make_raw(CACHE))
    assert bank_dir(base) == bank_dir(validate(make_raw({**CACHE, "epochs": 7, "teacher_bank.topk": 3})))
    for change in ({"teacher_bank.views": 5}, {"teacher_bank.scale": [0.2, 1.0]}, {"seed": 1},
                   {"teacher.params.width": 8}, {"data.test_fraction": 0.3}):
        assert bank_dir(validate(make_raw({**CACHE, **change}))) != bank_dir(base), change


def test_cached_run_never_calls_or_loads_the_teacher(make_raw, monkeypatch):
    from kd_engine.models.cnn import ResNet
    from kd_engine.run import train

    raw = make_raw({**CACHE, "epochs": 1, "teacher.name": "mlp", "teacher.params": {"hidden": 32}})
    first = open_run(train(validate(raw)))  # builds the teacher, then the bank
    assert first.status() == "finished"

    from kd_engine.models.mlp import MLP
    calls = []

    def forbidden(*args, **kwargs):
        calls.append(1)
        raise AssertionError("the teacher was used")

    monkeypatch.setattr(MLP, "forward", forbidden)
    monkeypatch.setattr("kd_engine.cache.build_teacher", forbidden)
    monkeypatch.setattr("kd_engine.cache.load_weights", forbidden)
    run = open_run(train(validate({**raw, "epochs": 2})))
    assert run.status() == "finished" and not calls
    assert ResNet.forward is not forbidden
    rows = run.instances(split="train", columns=["instance_id", "epoch", "bank_view", "bank_conf_y", "weight"])
    assert len(rows) == 2 * len(rows[rows.epoch == 0]) and rows.bank_view.between(0, 3).all()
    assert rows.bank_conf_y.between(0, 1).all() and (rows.weight == 1).all()
    assert "teacher_bank" in run.meta()["teacher_source"]


def test_config_errors(make_raw):
    cases = [({"use_teacher_bank": True, "teacher": None, "distill.terms": []}, "use_teacher_bank needs a teacher"),
             ({**CACHE, "teacher_bank.scale": [0.5, 0.2]}, "teacher_bank.scale"),
             ({**CACHE, "teacher_bank.views": 0}, "teacher_bank.views"),
             ({**CACHE, "teacher_bank.colour": 1}, "teacher_bank.colour")]
    for overrides, message in cases:
        raw = make_raw(overrides)
        if overrides.get("teacher", 1) is None:
            raw.pop("teacher")
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            validate(raw)
    feature = {**CACHE, "distill.terms": [{"loss": "attention_transfer", "student_layer": "layer1",
                                           "teacher_layer": "layer1"}]}
    for overrides, message in ((feature, "distill.terms.0.loss: the teacher bank stores logits only"),
                               ({**CACHE, "method": "scratch"}, "use_teacher_bank: method 'scratch' does not read"),
                               ({**CACHE, "data.name": "scenes"}, "use_teacher_bank: detection runs")):
        with pytest.raises(ConfigError, match=message) as err:
            check_teacher_bank(validate(make_raw(overrides)))
        assert "\n" not in str(err.value)
