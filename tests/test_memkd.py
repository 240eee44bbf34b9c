"""MemKD and the anomaly task: the cosine feature-KD losses and the memory losses against hand
values, AUROC against a hand count, the one-class digits splits, the key-value memory, and a
tiny run of the shipped config through `kd_engine.run.train` whose recorded AUROC is recomputed
from the recorded rows."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from kd_engine.config import load_raw, validate
from kd_engine.data import build_data
from kd_engine.data.digits_oneclass import PASTED_ID_OFFSET, partition, paste
from kd_engine.errors import ConfigError
from kd_engine.losses.anomaly import (cosine_distance_map, cosine_feature_kd, key_value_orthogonality,
                                      normality_embedding)
from kd_engine.metrics_extra import auroc
from kd_engine.parts.kv_memory import KeyValueMemory, attention_entropy
from kd_engine.tasks import task_for
from kd_engine.tasks.anomaly import pixel_auroc


# -- losses ---------------------------------------------------------------------------------------
def test_cosine_kd_zero_for_identical_and_scaled_features_two_for_opposite():
    f = torch.randn(3, 5, 4, 4)
    assert torch.allclose(cosine_feature_kd(f, f.clone(), reduction="none"), torch.zeros(3), atol=1e-6)
    assert torch.allclose(cosine_feature_kd(2.5 * f, f, reduction="none"), torch.zeros(3), atol=1e-6)
    assert torch.allclose(cosine_feature_kd(-f, f, reduction="none"), torch.full((3,), 2.0), atol=1e-6)


def test_cosine_kd_hand_case_and_reductions():
    # sample 0: positions (1,0)vs(1,0) -> 0 and (1,0)vs(0,1) -> 1: mean 0.5
    # sample 1: (1,1)vs(1,0) -> 1 - 1/sqrt2 and (0,1)vs(0,-1) -> 2
    s = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[1.0, 0.0], [1.0, 1.0]]]).view(2, 2, 2)  # (B, C, P)
    t = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, -1.0]]]).view(2, 2, 2)
    expected = torch.tensor([0.5, (1 - 1 / math.sqrt(2) + 2) / 2])
    assert torch.allclose(cosine_feature_kd(s, t, reduction="none"), expected, atol=1e-6)
    assert torch.isclose(cosine_feature_kd(s, t), expected.mean())
    assert torch.isclose(cosine_feature_kd(s, t, reduction="sum"), expected.sum())
    with pytest.raises(ValueError, match="same shape"):
        cosine_feature_kd(s, t[:, :1])


def test_half_squared_normalised_distance_equals_one_minus_cosine():
    a, b = torch.randn(4, 6, 3, 3), torch.randn(4, 6, 3, 3)
    na = a.numpy() / np.linalg.norm(a.numpy(), axis=1, keepdims=True)
    nb = b.numpy() / np.linalg.norm(b.numpy(), axis=1, keepdims=True)
    by_numpy = 0.5 * ((na - nb) ** 2).sum(1).reshape(4, -1).mean(1)
    assert np.allclose(normality_embedding(a, b, reduction="none").numpy(), by_numpy, atol=1e-5)
    assert np.allclose(cosine_feature_kd(a, b, reduction="none").numpy(), by_numpy, atol=1e-5)
    assert cosine_distance_map(a, b).shape == (4, 3, 3)


def test_orthogonality_hand_values():
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.isclose(key_value_orthogonality(k, k), torch.tensor(0.5))  # cos 1, 0, 0, 1 over 4
    assert torch.isclose(key_value_orthogonality(k, torch.tensor([[0.0, 2.0], [0.0, 3.0]])), torch.tensor(0.5))
    assert torch.isclose(key_value_orthogonality(k, -k), torch.tensor(-0.5))


# -- AUROC ------------------------------------------------------------------------------------------
def test_auroc_against_a_hand_count():
    # positive 0.35 beats 0.1, loses to 0.4; positive 0.8 beats both: 3 of 4 pairs
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # a tie counts one half: 0.5 vs 0.5 -> (1 + 0.5) / 2
    assert auroc([0, 0, 1], [0.2, 0.5, 0.5]) == pytest.approx(0.75)


def test_pixel_auroc_uses_only_images_with_ground_truth():
    maps = np.array([[[0.1, 0.9]], [[0.2, 0.8]], [[5.0, 5.0]]])
    masks = np.array([[[0, 1]], [[0, 0]], [[-1, -1]]], dtype=float)  # image 3 has no pixel truth
    # anomalous pixel 0.9 against normal pixels 0.1, 0.2, 0.8: beats all three
    assert pixel_auroc(maps, masks) == pytest.approx(1.0)
    masks[1, 0, 1] = 1  # now 0.9 and 0.8 anomalous vs 0.1 and 0.2 normal
    assert pixel_auroc(maps, masks) == pytest.approx(1.0)
    assert math.isnan(pixel_auroc(maps, np.zeros_like(masks)))


# -- memory ---------------------------------------------------------------------------------------
def test_fresh_memory_leaves_the_feature_unchanged_and_reads_a_distribution():
    torch.manual_seed(0)
    memory = KeyValueMemory(channels=4, slots=3)
    x = torch.randn(2, 4, 5, 5)
    fused, attention = memory(x)
    assert torch.allclose(fused, x, atol=1e-6)
    assert attention.shape == (2, 5, 5, 3) and torch.allclose(attention.sum(-1), torch.ones(2, 5, 5))


def test_sharp_memory_recalls_the_value_of_the_matching_key():
    memory = KeyValueMemory(channels=2, slots=2, temperature=0.01)
    with torch.no_grad():
        memory.keys.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        memory.values.copy_(torch.tensor([[3.0, 3.0], [-1.0, 2.0]]))
    x = torch.tensor([[0.0, 5.0], [2.0, 0.1]]).t().reshape(1, 2, 1, 2)  # positions (0, 5) and (2, 0.1)
    recall, attention = memory.read(x)
    assert torch.allclose(recall[0, :, 0, 0], torch.tensor([-1.0, 2.0]), atol=1e-4)
    assert torch.allclose(recall[0, :, 0, 1], torch.tensor([3.0, 3.0]), atol=1e-4)
    assert torch.allclose(attention_entropy(attention), torch.zeros(1), atol=1e-3)
    uniform = torch.full((1, 1, 1, 4), 0.25)
    assert torch.isclose(attention_entropy(uniform), torch.tensor([math.log(4)])).all()


def test_normality_loss_trains_keys_and_values():
    memory = KeyValueMemory(channels=3, slots=4)
    target = torch.randn(2, 3, 2, 2)
    normality_embedding(memory.read(target)[0], target).backward()
    key_value_orthogonality(memory.keys, memory.values).backward()
    assert memory.keys.grad.abs().sum() > 0 and memory.values.grad.abs().sum() > 0


# -- data -----------------------------------------------------------------------------------------
def _oneclass(seed=0, **params):
    return build_data(SimpleNamespace(name="digits_oneclass", val_fraction=0.1, test_fraction=0.3,
                                      params={"normal_class": 3, **params}), seed)


def test_oneclass_splits_kinds_and_masks():
    data = _oneclass()
    assert task_for("digits_oneclass").name == "anomaly" and task_for("digits_teacher_half").name == "classification"
    digits = load_digits_targets()
    teacher_rows, anomaly_rows = partition(0.5, 0)
    assert not set(teacher_rows) & set(anomaly_rows) and len(teacher_rows) + len(anomaly_rows) == 1797
    train = data.train
    assert set(digits[train.ids.numpy()]) == {3} and train.y.sum() == 0 and set(train.ids.tolist()) <= set(anomaly_rows)
    for split in (data.val, data.test):
        n = int((split.kind == 0).sum())
        assert n > 0 and (split.kind == 1).sum() == n and (split.kind == 2).sum() == n
        assert (split.y.numpy() == (split.kind != 0)).all()
        real = split.ids.numpy()[split.kind != 2]
        assert set(real) <= set(anomaly_rows) and not set(real) & set(train.ids.tolist())
        assert (digits[real[split.kind[split.kind != 2] == 1]] != 3).all()
        pasted = split.ids.numpy()[split.kind == 2]
        assert (pasted >= PASTED_ID_OFFSET).all() and set(pasted - PASTED_ID_OFFSET) == set(split.ids.numpy()[split.kind == 0])
        assert (split.masks[split.kind == 0] == 0).all() and (split.masks[split.kind == 1] == -1).all()
        assert (split.masks[split.kind == 2].reshape(n, -1).sum(1) == 9).all()
    assert len(set(data.test.ids.tolist()) | set(data.val.ids.tolist())) == len(data.test) + len(data.val)
    again = _oneclass()
    assert torch.equal(again.test.x, data.test.x) and not torch.equal(_oneclass(seed=1).train.ids, train.ids)
    with pytest.raises(ConfigError, match="data.params.normal_class"):
        _oneclass(normal_class=12)
    with pytest.raises(ConfigError, match="data.params: unknown parameter 'classes'"):
        _oneclass(classes=[1])


def test_paste_puts_the_square_where_it_changes_most():
    normal, source = np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float32)
    source[2:4, 1:3] = 1.0
    out, mask = paste(normal, source, 2)
    assert mask[2:4, 1:3].all() and mask.sum() == 4 and (out == source).all()


def load_digits_targets() -> np.ndarray:
    from sklearn.datasets import load_digits
    return load_digits().target


# -- a run ----------------------------------------------------------------------------------------
def _config(tmp_path, **overrides):
    raw = load_raw("configs/memkd_digits.yaml")
    raw.update(epochs=2, runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"), device="cpu")
    raw["teacher"]["train"]["epochs"] = 1
    raw["record"] = {"tensorboard": False, "attention_maps": 0, "feature_probe_size": 8}
    raw.update(overrides)
    return validate(raw, "memkd test")


def test_shipped_config_trains_and_records_scores_maps_and_auroc(tmp_path):
    from kd_engine.run import train
    from kd_engine.store import open_run

    run = open_run(train(_config(tmp_path), distributed=False))
    meta = run.meta()
    assert meta["task"] == "anomaly" and meta["layers"] == ["layer1", "layer2"] and meta["status"] == "finished"
    rows = run.instances(split="train")
    assert len(rows) and (rows["label"] == 0).all() and rows["memory_entropy"].between(0, math.log(16) + 1e-4).all()
    test = run.instances(split="test")
    assert set(test["kind"]) == {0, 1, 2}
    final = run.final_metrics()
    recomputed = roc_auc_score(test["label"], test["anomaly_score"])
    assert final["test/student_image_auroc"] == pytest.approx(recomputed)
    assert 0.0 <= final["test/student_pixel_auroc"] <= 1.0
    maps = run.load_artifact("anomaly_maps/test")
    assert maps.shape == (len(test), 8, 8)
    masks = run.load_artifact("anomaly_masks/test")
    assert masks.shape == maps.shape
    assert final["test/student_pixel_auroc"] == pytest.approx(pixel_auroc(maps.astype(np.float32), masks), abs=2e-3)
    listed = run.artifacts(kind="anomaly_map")
    order = json.loads(listed[listed["name"] == "anomaly_maps/test"]["meta"].iloc[0])["instance_ids"]
    assert order == test["instance_id"].tolist()


def test_baseline_and_method_errors_name_the_field(tmp_path):
    from kd_engine.run import train

    stpm = {"method": "stpm", "distill": {"params": {"layers": ["layer1", "layer2"]}}}
    with pytest.raises(ConfigError, match="distill.params.layers: layer1 gives student"):
        train(_config(tmp_path, student={"name": "resnet", "params": {"width": 8}}, **stpm), distributed=False)
    with pytest.raises(ConfigError, match="distill.params: unknown parameter 'memory_layers' for method stpm"):
        train(_config(tmp_path, method="stpm"), distributed=False)
    with pytest.raises(ConfigError, match="data.name: method memkd detects anomalies; use an anomaly dataset"):
        train(_config(tmp_path, data={"name": "digits"}), distributed=False)
    with pytest.raises(ConfigError, match=r"method: unknown anomaly method 'standard' \(allowed: memkd, stpm\)"):
        train(_config(tmp_path, method="standard", distill={}), distributed=False)
    bad = load_raw("configs/memkd_digits.yaml")["distill"]
    bad["params"]["memory_layers"] = ["layer3"]
    with pytest.raises(ConfigError, match="distill.params.memory_layers"):
        train(_config(tmp_path, distill=bad), distributed=False)


def test_student_learns_the_teacher_features_on_normal_images(tmp_path):
    """Two epochs of the baseline lower the cosine KD loss on the training images."""
    from kd_engine.run import train
    from kd_engine.store import open_run

    stpm = {"method": "stpm", "distill": {"params": {"layers": ["layer1", "layer2"]}}, "epochs": 3}
    rows = open_run(train(_config(tmp_path, **stpm), distributed=False)).instances(split="train")
    by_epoch = rows.groupby("epoch")["student_loss"].mean()
    assert by_epoch.iloc[-1] < by_epoch.iloc[0]
    assert F.relu(torch.tensor(by_epoch.to_numpy())).min() >= 0


def test_stopped_memkd_run_resumes_to_the_same_student_and_memory(tmp_path, monkeypatch):
    """A run stopped after its first epoch and resumed ends with exactly the weights (student and
    memory) and AUROC of an uninterrupted run: the memory is checkpointed with the student."""
    from safetensors.torch import load_file

    from kd_engine.methods.memkd import MemKD
    from kd_engine.run import train
    from kd_engine.store import open_run

    straight = train(_config(tmp_path / "a"), distributed=False)
    original = MemKD.begin_epoch

    def stop_at_second_epoch(self, epoch, total):
        if epoch == 1:
            raise KeyboardInterrupt
        original(self, epoch, total)

    monkeypatch.setattr(MemKD, "begin_epoch", stop_at_second_epoch)
    cfg = _config(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, distributed=False)
    monkeypatch.setattr(MemKD, "begin_epoch", original)
    stopped = next(d for d in (tmp_path / "b" / "runs").iterdir() if "memkd_digits" in d.name)  # not the teacher's
    assert open_run(stopped).meta()["status"] == "stopped"
    resumed = train(None, resume=stopped, distributed=False)
    a, b = (load_file(str(d / "checkpoints" / "student.safetensors")) for d in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (torch.load(d / "checkpoints" / "state.pt", weights_only=True)["distiller"] for d in (straight, resumed))
    memory = [k for k in sa if k.startswith("memories.")]
    assert memory and all(torch.equal(sa[k], sb[k]) for k in memory)
    assert (open_run(straight).final_metrics()["test/student_image_auroc"]
            == open_run(resumed).final_metrics()["test/student_image_auroc"])
