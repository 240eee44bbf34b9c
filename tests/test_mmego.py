"""MM-Ego-KD (paper 20): generated clips, softmin-weighted modality ensemble, ECE."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kd_engine.config import load_raw, validate
from kd_engine.data import build_data
from kd_engine.data.clips import STUDENT_FRAMES, generate_clips
from kd_engine.errors import ConfigError
from kd_engine.methods.mmego import MODALITIES, MMEgoKD
from kd_engine.parts.ensemble import ensemble_logits, modality_weights, softmin_weights
from kd_engine.metrics_extra import ece
from kd_engine.models import build_model


def test_softmin_weights_sum_to_one_and_follow_the_losses():
    losses = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 4.0], [2.0, 0.1, 1.0]])
    w = softmin_weights(losses, tau=1.0)
    e = np.exp(-losses.numpy())
    np.testing.assert_allclose(w.numpy(), e / e.sum(1, keepdims=True), rtol=1e-6)  # by numpy
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    for row_l, row_w in zip(losses, w):  # lower loss, higher weight (ties equal)
        order = row_l.argsort()
        assert (row_w[order][:-1] >= row_w[order][1:]).all()
    assert w[1, 0] == w[1, 1]
    # by hand: losses (0, ln 3) at tau 1 -> weights (3/4, 1/4); tau -> large: uniform
    torch.testing.assert_close(softmin_weights(torch.tensor([[0.0, float(np.log(3))]])), torch.tensor([[0.75, 0.25]]))
    torch.testing.assert_close(softmin_weights(losses, tau=1e6), torch.full((3, 3), 1 / 3), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="N, K"):
        softmin_weights(torch.ones(3))


def test_ensemble_and_weight_rules():
    logits = torch.randn(3, 4, 5)
    w = torch.softmax(torch.randn(4, 3), 1)
    manual = sum(w[:, k:k + 1] * logits[k] for k in range(3))
    torch.testing.assert_close(ensemble_logits(logits, w), manual)
    losses = torch.tensor([[1.0, 0.2, 3.0], [1.0, 0.6, 3.0]])
    torch.testing.assert_close(modality_weights("uniform", losses, 1.0, MODALITIES), torch.full((2, 3), 1 / 3))
    assert modality_weights("best", losses, 1.0, MODALITIES).tolist() == [[0.0, 1.0, 0.0]] * 2
    assert modality_weights("audio", losses, 1.0, MODALITIES).tolist() == [[0.0, 0.0, 1.0]] * 2
    data = modality_weights("dataset_softmin", losses, 1.0, MODALITIES)
    torch.testing.assert_close(data[0], softmin_weights(torch.tensor([[1.0, 0.4, 3.0]]))[0])
    assert torch.equal(data[0], data[1])


def test_ece_hand_built():
    # three samples at confidence 0.9, two correct: one bin, |2/3 - 0.9|
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9]])
    assert ece(probs, np.array([0, 0, 1 - 1])) == pytest.approx(abs(2 / 3 - 0.9))
    # two bins: conf 0.6 (right) and 0.8 (wrong), each half the data: 0.5*0.4 + 0.5*0.8
    assert ece(np.array([[0.6, 0.4], [0.2, 0.8]]), np.array([0, 0])) == pytest.approx(0.6)


def test_generator_modalities():
    a = generate_clips(48, seed=3, flow_noise=0.0)
    b = generate_clips(48, seed=3, flow_noise=0.0)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["rgb"].shape == (48, 4, 16, 16) and a["flow"].shape == (48, 3, 16, 16) and a["audio"].shape == (48, 1, 64)
    assert np.bincount(a["y"]).tolist() == [2] * 24
    np.testing.assert_allclose(a["flow"], np.diff(a["rgb"], axis=1), atol=1e-6)  # no flow noise: exact differences
    quiet = generate_clips(48, seed=3, audio_noise=0.0)
    peak = np.abs(np.fft.rfft(quiet["audio"][:, 0], axis=1)).argmax(1)
    assert peak.tolist() == np.where(quiet["y"] % 2 == 0, 4, 8).tolist()  # frequency = speed only
    data = build_data(SimpleNamespace(name="ego_clips", params={"n_teacher": 48, "n_train": 48, "n_val": 24, "n_test": 24}), 0)
    mods = data.meta["modalities"]
    assert torch.equal(data.train.x, mods["rgb"][data.train.ids][:, list(STUDENT_FRAMES)])
    assert not set(data.meta["teacher_ids"].tolist()) & set(data.train.ids.tolist())
    assert data.images([int(data.train.ids[0])]).shape == (1, 16, 64)
    with pytest.raises(ConfigError, match="data.params.frames"):
        build_data(SimpleNamespace(name="ego_clips", params={"frames": 9}), 0)


def _raw(tmp_path, **params):
    raw = load_raw("configs/mmego_clips.yaml")
    raw["data"]["params"].update(n_teacher=96, n_train=96, n_val=48, n_test=48)
    raw["distill"]["params"].update(teacher_epochs=2, **params)
    raw.update(epochs=2, threads=1, device="cpu", runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "c"))
    return raw


def test_mmego_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="distill.params.ensemble"):
        cfg = validate(_raw(tmp_path, ensemble="median"))
        MMEgoKD(cfg, build_model(cfg.student, (2, 16, 16), 24), None, (2, 16, 16))
    raw = _raw(tmp_path)
    raw["data"] = {"name": "digits"}
    cfg = validate(raw)
    with pytest.raises(ConfigError, match="data.name"):
        MMEgoKD(cfg, build_model(cfg.student, (1, 8, 8), 10), None, (1, 8, 8))


def test_mmego_trains_from_its_config_records_weights_and_caches_teachers(tmp_path):
    from kd_engine.run import train
    from kd_engine.store import open_run

    run = open_run(train(validate(_raw(tmp_path)), distributed=False))
    assert run.status() == "finished"
    rows = run.instances(split="train")
    cols = [f"weight_{m}" for m in MODALITIES]
    assert set(cols) | {f"loss_{m}" for m in MODALITIES} | {"teacher_loss", "distill_loss"} <= set(rows.columns)
    np.testing.assert_allclose(rows[cols].sum(1), 1.0, rtol=1e-5)
    losses = rows[[f"loss_{m}" for m in MODALITIES]].to_numpy()
    assert (rows[cols].to_numpy().argmax(1) == losses.argmin(1)).all()  # the lowest-loss teacher weighs most
    scalars = run.scalars()
    keys = set(scalars["key"])
    assert {"test/student_ece", "test/teacher_rgb_acc", "test/teacher_audio_ece", "teachers/flow_train_loss"} <= keys
    cached = list((tmp_path / "c" / "mmego").glob("*.safetensors"))
    assert len(cached) == 3
    again = open_run(train(validate(_raw(tmp_path, ensemble="uniform")), distributed=False))
    assert "teachers/flow_train_loss" not in set(again.scalars()["key"])  # the teachers came from the cache
    first = rows.sort_values(["epoch", "instance_id"])
    second = again.instances(split="train").sort_values(["epoch", "instance_id"])
    np.testing.assert_allclose(first["loss_rgb"].to_numpy(), second["loss_rgb"].to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(second["weight_rgb"], 1 / 3, rtol=1e-6)


def test_a_stopped_mmego_run_resumes_with_its_teachers_from_the_checkpoint(tmp_path, monkeypatch):
    """Stopped after epoch 0 and resumed with the teacher cache gone, the run ends with exactly
    the student of an uninterrupted run: the modality teachers travel in the checkpoint."""
    import shutil

    from safetensors.torch import load_file

    from conftest import stop_after_epoch
    from kd_engine.run import train
    from kd_engine.trainer import StopRequested, Trainer

    def raw(sub):
        r = _raw(tmp_path / sub)
        r["epochs"] = 2
        return validate(r)

    reference = train(raw("a"), distributed=False)
    resume_normally = stop_after_epoch(monkeypatch, Trainer, "_checkpoint", 0)
    with pytest.raises(StopRequested):
        train(raw("b"), distributed=False)
    resume_normally()
    shutil.rmtree(tmp_path / "b" / "c")
    (stopped,) = (tmp_path / "b" / "runs").iterdir()
    resumed = train(None, resume=stopped, distributed=False)
    a = load_file(str(reference / "checkpoints" / "student.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "student.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
