"""Cr-KD (paper 10): Sinkhorn-Knopp, the class-relation loss and its *non-detached* gate, the
NCD dataset, the NCD metrics, the method's step and a short two-stage run."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kd_engine.config import load_raw, validate
from kd_engine.data import build_data
from kd_engine.data.augment import jitter
from kd_engine.errors import ConfigError
from kd_engine.losses.class_relation import class_relation_kd, relation_gate
from kd_engine.losses.sinkhorn import sinkhorn_knopp
from kd_engine.methods.crkd import CrKD, crkd_settings
from kd_engine.models import build_model
from kd_engine.store import open_run
from kd_engine.methods.ncd_stage import ncd_metrics

INPUT = (1, 8, 8)


# -- Sinkhorn-Knopp ----------------------------------------------------------------------------
def test_sinkhorn_uniform_logits_give_uniform_labels():
    q = sinkhorn_knopp(torch.zeros(6, 3))
    torch.testing.assert_close(q, torch.full((6, 3), 1 / 3))


def test_sinkhorn_equipartitions_a_batch_that_prefers_one_cluster():
    # both samples prefer cluster 0, sample 1 less so: equipartition sends it to cluster 1
    logits = torch.tensor([[1.0, 0.0], [0.6, 0.5]])
    q = sinkhorn_knopp(logits, epsilon=0.05, iterations=200)
    torch.testing.assert_close(q.sum(1), torch.ones(2))
    torch.testing.assert_close(q.sum(0), torch.ones(2), atol=1e-3, rtol=0)
    assert q.argmax(1).tolist() == [0, 1]
    assert not torch.equal(q.argmax(1), logits.argmax(1))


# -- the class-relation loss and its gate -------------------------------------------------------
def test_relation_gate_by_hand_and_renormalised():
    z = torch.tensor([[0.4, 0.0], [0.0, 0.4]])  # known = class 0; τT = 0.4 -> softmax([1, 0]), ([0, 1])
    u = relation_gate(z, known=1, tau=0.1, temperature=4.0)
    e = math.e
    raw = torch.tensor([e / (e + 1), 1 / (e + 1)])
    torch.testing.assert_close(u, raw / raw.mean())
    torch.testing.assert_close(u.mean(), torch.tensor(1.0))


def test_relation_gate_keeps_its_gradient():
    z = torch.tensor([[0.3, -0.1, 0.2], [0.0, 0.5, -0.4]], requires_grad=True)
    u = relation_gate(z, known=2)
    assert u.requires_grad
    (u * torch.tensor([1.0, 3.0])).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert z.grad[:, 2].abs().sum() > 0  # the novel logit moves the gate too


def test_class_relation_kd_by_hand():
    s = torch.tensor([[0.2, -0.2]])
    t = torch.tensor([[0.0, 0.4]])
    # τT = 0.4: p = softmax([0, 1]), q = softmax([0.5, -0.5]); loss = -T² Σ p log q
    p = torch.tensor([1.0, math.e]) / (1 + math.e)
    log_q = torch.log_softmax(torch.tensor([0.5, -0.5]), 0)
    expected = -16.0 * (p * log_q).sum()
    torch.testing.assert_close(class_relation_kd(s, t, None, 0.1, 4.0), expected)
    gate = torch.tensor([2.0])
    torch.testing.assert_close(class_relation_kd(s, t, gate, 0.1, 4.0, reduction="none"), 2.0 * expected.view(1))


def test_class_relation_kd_of_identical_logits_is_T2_times_the_entropy():
    z = torch.randn(5, 4)
    p = F.softmax(z / 0.4, 1)
    entropy = -(p * p.log()).sum(1)
    torch.testing.assert_close(class_relation_kd(z, z, None, 0.1, 4.0, reduction="none"), 16.0 * entropy)


# -- the method --------------------------------------------------------------------------------
def _cfg(**params):
    return validate({"method": "crkd", "device": "cpu",
                     "data": {"name": "digits_ncd"},
                     "student": {"name": "ncd_resnet", "params": {"known": 5, "width": 4, "heads": 2,
                                                                   "hidden": 8, "proj_dim": 6}},
                     "distill": {"params": params}})


def _method(**params) -> CrKD:
    cfg = _cfg(**params)
    torch.manual_seed(0)
    student = build_model(cfg.student, INPUT, 10)
    method = CrKD(cfg, student, None, INPUT)
    method.finish_stage1()
    with torch.no_grad():  # a teacher that differs from the student
        for p in method.frozen.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return method


def _batch():
    torch.manual_seed(3)
    return torch.rand(16, *INPUT), torch.arange(16) % 10


def _step(method, x, y, seed=5):
    torch.manual_seed(seed)  # the same augmented views every call
    return method(x, y)


def test_gate_gradient_reaches_the_novel_heads_only_when_the_gate_is_on():
    x, y = _batch()
    for gate, expect_grad in ((True, True), (False, False)):
        method = _method(alpha=1.0, gate=gate)
        out = _step(method, x, y)
        protos = [h.weight for h in method.student.novel_heads]
        grads = torch.autograd.grad(out.losses["distill"], protos, allow_unused=True)
        total = sum(float(g.abs().sum()) for g in grads if g is not None)
        # the KD term reads only the known head, so the novel heads feel it only through u
        assert (total > 0) == expect_grad, (gate, total)


def test_kd_applies_to_unlabelled_samples_only_and_alpha_zero_is_uno():
    x, y = _batch()
    out = _step(_method(alpha=0.1), x, y)
    unl = y >= 5
    assert (out.per_sample["distill_loss"][~unl] == 0).all() and (out.per_sample["distill_loss"][unl] > 0).all()
    assert (out.per_sample["gate"][~unl] == 0).all() and (out.per_sample["gate"][unl] > 0).all()
    assert out.per_sample["unlabelled"].tolist() == unl.float().tolist()
    uno = _step(_method(alpha=0.0), x, y)
    assert uno.losses["distill"].item() == 0.0
    torch.testing.assert_close(uno.losses["task"], out.losses["task"])
    torch.testing.assert_close(out.losses["distill"], 0.1 * out.per_sample["distill_loss"][unl].mean())


def test_novel_labels_are_never_used_for_training():
    x, y = _batch()
    shuffled = y.clone()
    novel = (y >= 5).nonzero().flatten()
    shuffled[novel] = 5 + (y[novel] - 5 + 2) % 5  # other novel classes, same unlabelled mask
    a, b = _step(_method(), x, y), _step(_method(), x, shuffled)
    for key in a.losses:
        torch.testing.assert_close(a.losses[key], b.losses[key])
    torch.testing.assert_close(a.per_sample["gate"], b.per_sample["gate"])


def test_pseudo_labels_are_novel_classes_and_prototypes_stay_normalised():
    method = _method()
    x, y = _batch()
    out = _step(method, x, y)
    pseudo = out.per_sample["pseudo_label"]
    assert (pseudo[y < 5] == -1).all() and ((pseudo[y >= 5] >= 5) & (pseudo[y >= 5] <= 9)).all()
    out.total.backward()
    torch.optim.SGD(method.trainable_parameters(), lr=1.0).step()
    method.after_step(0, 0)
    for head in [method.student.known_head, *method.student.novel_heads]:
        torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(len(head.weight)))


@pytest.mark.parametrize("params, field", [
    ({"alpah": 0.1}, "distill.params: unknown parameter 'alpah'"),
    ({"gate": "yes"}, "distill.params.gate"),
    ({"alpha": -1}, "distill.params.alpha"),
    ({"tau": 0}, "distill.params.tau"),
    ({"stage1_epochs": 1.5}, "distill.params.stage1_epochs"),
])
def test_bad_params_name_the_field(params, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        crkd_settings(params)


def test_wrong_student_or_a_teacher_section_is_refused():
    cfg = validate({"method": "crkd", "student": {"name": "mlp"}})
    with pytest.raises(ConfigError, match="ncd_resnet"):
        CrKD(cfg, build_model(cfg.student, INPUT, 10), None, INPUT)
    cfg = _cfg()
    student = build_model(cfg.student, INPUT, 10)
    with pytest.raises(ConfigError, match="teacher"):
        CrKD(cfg, student, build_model(cfg.student, INPUT, 10), INPUT)


# -- data, augmentation and metrics ------------------------------------------------------------
def test_digits_ncd_puts_the_known_classes_first():
    cfg = validate({"student": {"name": "mlp"}, "data": {"name": "digits_ncd", "params": {"known_classes": [3, 7]}}}).data
    data = build_data(cfg, 0)
    from sklearn.datasets import load_digits

    digit = load_digits().target[data.train.ids.numpy()]
    y = data.train.y.numpy()
    assert (y[digit == 3] == 0).all() and (y[digit == 7] == 1).all() and (y[digit == 0] == 2).all()
    assert data.meta["known"] == 2 and data.class_names[:3] == ["3", "7", "0 (novel)"]
    with pytest.raises(ConfigError, match=r"data\.params\.known_classes"):
        build_data(validate({"student": {"name": "mlp"},
                             "data": {"name": "digits_ncd", "params": {"known_classes": [3, 3]}}}).data, 0)
    with pytest.raises(ConfigError, match=r"data\.params: unknown parameter 'novel'"):
        build_data(validate({"student": {"name": "mlp"},
                             "data": {"name": "digits_ncd", "params": {"novel": [1]}}}).data, 0)


def test_jitter_without_randomness_is_the_identity():
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(jitter(x, shift_px=0, noise=0, rotate_deg=0, scale=0), x, atol=1e-6, rtol=0)
    assert not torch.allclose(jitter(x), x)


def test_ncd_metrics_are_hungarian_on_novel_and_plain_on_known():
    y = np.array([0, 1, 2, 2, 3, 3])  # known = 2: classes 2, 3 are novel
    pred = {"label": y, "known": np.array([0, 0, 9, 9, 9, 9]),
            "novel": np.array([9, 9, 3, 3, 2, 2]),   # clusters swapped: still perfect
            "joint": np.array([0, 1, 3, 3, 2, 2])}
    m = ncd_metrics(pred, known=2)
    assert m["novel_acc"] == 1.0 and m["known_acc"] == 0.5 and m["all_acc"] == 1.0


# -- a short run -------------------------------------------------------------------------------
def test_short_two_stage_run(tmp_path):
    from kd_engine.run import train

    raw = load_raw("configs/crkd_digits.yaml")
    raw.update(epochs=1, threads=1, device="cpu", runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "c"))
    raw["distill"]["params"]["stage1_epochs"] = 1
    raw["student"]["params"].update(width=4, heads=2)
    run = open_run(train(validate(raw), distributed=False))
    final = run.final_metrics()
    for key in ("train/novel_acc", "test/novel_acc", "test/known_acc", "test/all_acc"):
        assert 0.0 <= final[key] <= 1.0, key
    assert final["test/student_acc"] == final["test/all_acc"]
    keys = set(run.scalar_keys())
    assert {"stage1/train_known_acc", "train/known_entropy_novel", "train/novel_acc", "train/distill"} <= keys
    rows = run.instances(split="train", columns=["label", "gate", "unlabelled", "pseudo_label"])
    assert ((rows["gate"] > 0) == (rows["label"] >= 5)).all()
    with pytest.raises(ConfigError, match=r"student\.params\.known"):
        raw["student"]["params"]["known"] = 4
        train(validate(raw), distributed=False)
