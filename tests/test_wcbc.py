"""WCBC-IOD and the class-incremental task: the splitter and the digit-cell data, the class
prototypes and their distance matrices (against SciPy and numpy), the between- and within-class
losses against hand values, and a tiny run of the shipped config through `kd_engine.run.train`
whose recorded metrics are recomputed from the recorded rows."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist, jensenshannon
from scipy.special import rel_entr, softmax

from kd_engine.config import load_raw, validate
from kd_engine.data import build_data
from kd_engine.data.incremental import BACKGROUND, split_incremental
from kd_engine.errors import ConfigError
from kd_engine.losses.class_structure import between_class, feature_distance_matrix, js_matrix, within_class
from kd_engine.models import build_model
from kd_engine.parts.prototypes import GROUND_TRUTH, TEACHER, UNASSIGNED, assign_classes, class_prototypes, matrix_correlation


# -- the splitter and the data -----------------------------------------------------------------------
def test_split_incremental_hides_old_digits_only_in_the_new_task():
    digits = np.array([[0, 4, 5, -1], [9, 2, -1, 7]])
    assert split_incremental(digits, 5, "old").tolist() == [[0, 4, 5, 10], [9, 2, 10, 7]]
    assert split_incremental(digits, 5, "new").tolist() == [[10, 10, 5, 10], [9, 10, 10, 7]]
    assert split_incremental(digits, 5, "joint").tolist() == split_incremental(digits, 5, "old").tolist()
    with pytest.raises(ConfigError, match="data.params.stage: expected one of old, new, joint, got 'both'"):
        split_incremental(digits, 5, "both")


def _data(stage, **params):
    cfg = {"name": "digit_cells_incremental", "params": {"stage": stage, "n_per_task": 30, "n_val": 10,
                                                        "n_test": 20, **params}}
    return build_data(validate({"name": "t", "data": cfg, "student": {"name": "mlp"}}, "t").data, 3)


def test_stages_share_pools_and_test_and_label_as_the_task_says():
    old, new, joint = _data("old"), _data("new"), _data("joint")
    assert torch.equal(old.test.x, new.test.x) and torch.equal(old.test.y, joint.test.y)
    assert (old.train.digits < 5).all()  # task 1 shows old digits only
    d, y = new.train.digits, new.train.y.numpy()
    assert ((d >= 5) == (y < 10)).all() and (y[d < 5] == BACKGROUND).all() and (d < 5).any()
    assert len(joint.train) == 60 and set(joint.train.ids.tolist()) == set(old.train.ids.tolist()) | set(new.train.ids.tolist())
    assert (joint.train.y.numpy() == np.where(joint.train.digits < 0, 10, joint.train.digits)).all()
    x = new.train.x[0, 0].numpy()
    for cell in range(4):  # an empty cell is blank, a digit cell is not
        r, c = divmod(cell, 2)
        assert (x[8 * r:8 * r + 8, 8 * c:8 * c + 8].sum() == 0) == (new.train.digits[0, cell] < 0)
    with pytest.raises(ConfigError, match=r"data.params.old_classes: expected an integer in \[1, 9\], got 12"):
        _data("new", old_classes=12)


def test_cell_transformer_reads_cells_row_major():
    model = build_model(validate({"name": "t", "data": {"name": "digits"}, "student": {"name": "cell_transformer"}},
                                 "t").student, (1, 16, 16), 11)
    x = torch.arange(256.0).view(1, 1, 16, 16)
    cells = model.cells(x)
    assert cells.shape == (4, 1, 8, 8)
    assert torch.equal(cells[1, 0], x[0, 0, :8, 8:]) and torch.equal(cells[2, 0], x[0, 0, 8:, :8])
    assert model(x).shape == (1, 4, 11)


# -- prototypes and distance matrices ------------------------------------------------------------------
def test_prototypes_are_group_means_with_a_min_count():
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0], [9.0, 9.0], [7.0, 7.0]])
    classes = torch.tensor([0, 0, 2, -1, 0])
    mu, present = class_prototypes(values, classes, 3, min_count=2)
    assert torch.allclose(mu[0], torch.tensor([11 / 3, 13 / 3])) and torch.equal(mu[1], torch.zeros(2))
    assert torch.equal(mu[2], torch.tensor([5.0, 0.0])) and present.tolist() == [True, False, False]


def test_distance_matrices_match_scipy():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(4, 6))
    assert np.allclose(feature_distance_matrix(torch.tensor(mu)).numpy(), cdist(mu, mu), atol=1e-6)
    pi = softmax(rng.normal(size=(4, 5)), axis=1)
    expected = np.array([[jensenshannon(p, q) ** 2 for q in pi] for p in pi])  # SciPy's is the sqrt, nats
    assert np.allclose(js_matrix(torch.tensor(pi)).numpy(), expected, atol=1e-7)
    one_hot = torch.eye(3, dtype=torch.float64)  # disjoint supports: JS = log 2
    assert torch.allclose(js_matrix(one_hot), math.log(2) * (1 - torch.eye(3, dtype=torch.float64)))


def test_matrix_correlation_uses_the_upper_triangle():
    a = np.array([[0, 1, 2], [1, 0, 4], [2, 4, 0]], dtype=float)
    b = np.array([[0, 2, 3], [9, 0, 8], [9, 9, 0]], dtype=float)  # lower triangle ignored
    assert matrix_correlation(a, b) == pytest.approx(np.corrcoef([1, 2, 4], [2, 3, 8])[0, 1])
    assert math.isnan(matrix_correlation(a[:2, :2], b[:2, :2]))


def test_assignment_labels_first_then_confident_teacher():
    labels = torch.tensor([7, 10, 10, 10])
    probs = torch.tensor([[0.9, 0.0, 0.0, 0.1], [0.2, 0.6, 0.1, 0.1], [0.4, 0.1, 0.0, 0.5], [0.3, 0.3, 0.3, 0.1]])
    a = assign_classes(labels, probs, known=[0, 1, 2], background=10, threshold=0.5)
    assert a.classes.tolist() == [7, 1, -1, -1]
    assert a.source.tolist() == [GROUND_TRUTH, TEACHER, UNASSIGNED, UNASSIGNED]
    assert torch.allclose(a.confidence, torch.tensor([0.9, 0.6, 0.4, 0.3]))


# -- the losses ----------------------------------------------------------------------------------------
def test_between_class_zero_for_identical_and_hand_case():
    mu, pi = torch.randn(3, 4), torch.softmax(torch.randn(3, 5), 1)
    assert torch.allclose(between_class(mu, mu.clone(), pi, pi.clone(), reduction="none"), torch.zeros(3), atol=1e-6)
    # features: student distances 3 (0-1), 4 (0-2), 5 (1-2); teacher distances 1, 4, sqrt(17)
    s = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 4.0]])
    same = torch.full((3, 2), 0.5)
    gap = 5 - math.sqrt(17)
    per_class = between_class(s, t, same, same, reduction="none")
    assert torch.allclose(per_class, torch.tensor([2.0, 2 + gap, gap]), atol=1e-5)
    assert between_class(s, t, same, same, reduction="sum").item() == pytest.approx(2 * (2 + gap), abs=1e-5)
    pi_s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])  # JS matrix entries add to the L1 norm
    expected = np.abs(np.array([[jensenshannon(p, q) ** 2 for q in pi_s.numpy()] for p in pi_s.numpy()]))
    assert between_class(t, t, pi_s, same, reduction="sum").item() == pytest.approx(expected.sum(), abs=1e-5)
    with pytest.raises(ValueError, match="same K"):
        between_class(s, t[:2], same, same)


def test_within_class_against_numpy_and_reductions():
    rng = np.random.default_rng(1)
    f_s, f_t, c_s, c_t = (rng.normal(size=(3, 4)) for _ in range(4))
    z_s, z_t = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    w = np.array([1.0, 0.5, 0.0])
    tau = 2.0
    offset = ((f_s - c_s) - (f_t - c_t)) ** 2
    kl = rel_entr(softmax(z_t / tau, 1), softmax(z_s / tau, 1)).sum(1)
    expected = w * (offset.sum(1) + kl)
    args = [torch.tensor(a) for a in (f_s, f_t, c_s, c_t, z_s, z_t, w)]
    got = within_class(*args, temperature=tau, reduction="none")
    assert np.allclose(got.numpy(), expected, atol=1e-6)
    assert within_class(*args, temperature=tau).item() == pytest.approx(expected.mean())
    same = within_class(args[0], args[0], args[2], args[2], args[4], args[4], reduction="none")
    assert torch.allclose(same, torch.zeros_like(same), atol=1e-6)
    # a shifted instance with the same offset from its shifted centre costs nothing
    shifted = within_class(args[0] + 3, args[0], args[2] + 3, args[2], args[4], args[4], reduction="none")
    assert torch.allclose(shifted, torch.zeros_like(shifted), atol=1e-5)
    with pytest.raises(ValueError, match="teacher_features has shape"):
        within_class(args[0], args[1][:2], *args[2:])


# -- a tiny run ------------------------------------------------------------------------------------------
def _config(tmp_path, **overrides):
    raw = load_raw("configs/wcbc_cells.yaml")
    raw.update(epochs=1, runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"), device="cpu")
    raw["teacher"]["train"]["epochs"] = 1
    for data in (raw["data"], raw["teacher"]["data"]):
        data["params"].update(n_per_task=48, n_val=8, n_test=24)
    raw.update(overrides)
    return validate(raw, "wcbc test")


def test_shipped_config_trains_records_decisions_and_recomputable_metrics(tmp_path):
    from kd_engine.run import train
    from kd_engine.store import open_run

    run = open_run(train(_config(tmp_path), distributed=False))
    meta = run.meta()
    assert meta["task"] == "incremental" and meta["old"] == [0, 1, 2, 3, 4] and meta["status"] == "finished"
    rows = run.instances(split="train")
    assert len(rows) == 48 * 4 and set(rows["cell"]) == {0, 1, 2, 3}
    labelled = rows["label"] != 10
    assert (rows.loc[labelled, "assigned"] == rows.loc[labelled, "label"]).all()
    assert (rows.loc[labelled, "source"] == GROUND_TRUTH).all()
    by_teacher = rows["source"] == TEACHER
    assert (rows.loc[by_teacher, "omega"] >= 0.5).all() and rows["assigned"][by_teacher].between(0, 4).all()
    assert (rows.loc[rows["source"] == UNASSIGNED, "assigned"] == -1).all()
    test = run.instances(split="test")
    final = run.final_metrics()
    old = test["digit"].between(0, 4)
    truth = test["digit"].where(test["digit"] >= 0, 10)
    assert final["test/student_old_acc"] == pytest.approx((test["student_pred"] == truth)[old].mean())
    new_acc = (test["student_pred"] == truth)[test["digit"] >= 5].mean()
    old_acc = final["test/student_old_acc"]
    expected_h = 2 * old_acc * new_acc / (old_acc + new_acc) if old_acc + new_acc else 0.0  # both 0: H = 0
    assert final["test/student_harmonic"] == pytest.approx(expected_h)
    assert -1 <= final["test/student_df_corr"] <= 1
    matrices = run.load_artifact("class_distances/test")
    assert matrices.shape == (2, 10, 10) and np.allclose(np.diagonal(matrices, axis1=1, axis2=2), 0, atol=1e-4)


def test_student_starts_from_the_teacher_and_errors_name_the_field(tmp_path):
    from kd_engine.methods.wcbc import WCBC
    from kd_engine.run import train

    cfg = _config(tmp_path)
    student, teacher = (build_model(spec, (1, 16, 16), 11) for spec in (cfg.student, cfg.teacher))
    WCBC(cfg, student, teacher, (1, 16, 16))
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), teacher.state_dict().values()))
    with pytest.raises(ConfigError, match="distill.params.start_from_teacher: the student cannot take"):
        bad = _config(tmp_path, student={"name": "cell_transformer", "params": {"dim": 16}})
        WCBC(bad, build_model(bad.student, (1, 16, 16), 11), teacher, (1, 16, 16))
    with pytest.raises(ConfigError, match="data.name: method wcbc learns classes incrementally"):
        train(_config(tmp_path, data={"name": "digits"}), distributed=False)
    with pytest.raises(ConfigError, match="distill.params.threshold: expected a number"):
        train(_config(tmp_path, distill={"params": {"threshold": 1.5}}), distributed=False)


def test_one_step_records_the_assignment_used_and_always_the_same_losses(tmp_path):
    from types import SimpleNamespace

    from kd_engine.methods.wcbc import WCBC

    data = SimpleNamespace(meta={"old": [0, 1, 2, 3, 4], "background": 10}, num_classes=11)
    x = torch.rand(6, 1, 16, 16)
    y = torch.tensor([[5, 10, 7, 10]] * 6)  # two labelled new objects and two unlabelled cells per image
    for classes in ("all", "old"):
        cfg = _config(tmp_path, distill={"params": {"classes": classes, "threshold": 0.0}})
        student, teacher = (build_model(spec, (1, 16, 16), 11) for spec in (cfg.student, cfg.teacher))
        method = WCBC(cfg, student, teacher, (1, 16, 16))
        method.check_data(data)
        out = method(x, y)
        assert set(out.losses) == {"task", "between", "within"} and all(torch.isfinite(v) for v in out.losses.values())
        assigned, source = out.per_sample["assigned"], out.per_sample["source"]
        assert len(assigned) == 24 and (source[y.reshape(-1) != 10] == GROUND_TRUTH).all()
        new = y.reshape(-1) != 10
        expected_new = y.reshape(-1)[new] if classes == "all" else torch.full((12,), -1)
        assert torch.equal(assigned[new], expected_new)  # the old-only ablation leaves new objects out
        assert (assigned[~new] >= 0).all() and (assigned[~new] <= 4).all()  # threshold 0: the teacher assigns all
        out.total.backward()
