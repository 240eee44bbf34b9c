"""ORC-style group distillation (paper 27, a reconstruction): group target, error set, promotion,
which member learns from what, roles, config errors, and a short run through the group loop."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kd_engine.config import load_raw, validate
from kd_engine.errors import ConfigError
from kd_engine.losses.logit import kd
from kd_engine.methods.orc import ORC, error_mask, group_target, orc_settings, promoted_indices
from kd_engine.models import build_model
from kd_engine.store import open_run
from kd_engine.trainers.checkpoint import load_weights, read_metadata

INPUT = (1, 2, 2)


def _cfg(**params):
    raw = {"name": "orc_test", "method": "orc", "device": "cpu",
           "teacher": {"name": "mlp", "params": {"hidden": 6, "layers": 1}},
           "student": {"name": "mlp", "params": {"hidden": 4, "layers": 1}},
           "distill": {"params": {"students": [{}, {"hidden": 5}, {"hidden": 3}], **params}}}
    return validate(raw)


def _orc(**params) -> ORC:
    cfg = _cfg(**params)
    torch.manual_seed(0)
    teacher = build_model(cfg.teacher, INPUT, 3)
    student = build_model(cfg.student, INPUT, 3)
    return ORC(cfg, student, teacher, INPUT)


def _batch(n: int = 12):
    torch.manual_seed(1)
    return torch.randn(n, *INPUT), torch.randint(0, 3, (n,))


def _grads(module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                      for p in module.parameters()])


def _param_grad(loss, module) -> torch.Tensor:
    params = list(module.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


# -- the pieces, with known answers ------------------------------------------------------------
def test_group_target_is_the_mean_softmax_at_T():
    a = torch.tensor([[2.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0, 2.0]])
    target = group_target([a, b], temperature=2.0)
    # softmax([1, 0, 0]) = [e, 1, 1] / (e + 2); the mean with its mirror image:
    e = math.e
    expected = torch.tensor([[(e + 1) / 2, 1.0, (e + 1) / 2]]) / (e + 2)
    torch.testing.assert_close((target / 2.0).softmax(1), expected)
    # kd against the target equals T^2 KL(p_G || q) written out by hand
    s = torch.tensor([[0.5, -0.5, 1.0]])
    q = (s / 2.0).softmax(1)
    by_hand = 4.0 * (expected * (expected / q).log()).sum()
    torch.testing.assert_close(kd(s, target, 2.0), by_hand)


def test_group_target_of_one_member_is_plain_kd():
    z, s = torch.randn(4, 5), torch.randn(4, 5)
    torch.testing.assert_close(kd(s, group_target([z], 4.0), 4.0, reduction="none"),
                               kd(s, z, 4.0, reduction="none"))


def test_error_mask_uses_the_ensemble_mean_softmax():
    y = torch.tensor([0, 0, 1])
    s1 = torch.tensor([[5.0, 0.0], [0.0, 1.0], [0.0, 5.0]])   # right, wrong (mildly), right
    s2 = torch.tensor([[0.0, 1.0], [5.0, 0.0], [9.0, 0.0]])   # wrong (mildly), right, wrong
    # samples 0 and 1: the confident right vote outweighs the mild wrong one (a majority of
    # argmaxes would tie); sample 2: the more confident wrong vote wins -> an error
    assert error_mask([s1, s2], y).tolist() == [False, False, True]


def test_promotion_is_the_lowest_batch_ce_first_index_on_ties():
    ce = torch.tensor([[0.5, 0.5], [0.2, 0.2], [0.2, 0.2], [0.9, 0.1]])
    assert promoted_indices(ce, 1) == [1]
    assert promoted_indices(ce, 2) == [1, 2]
    assert promoted_indices(ce, 3) == [0, 1, 2]


# -- who learns from what ----------------------------------------------------------------------
def test_orc_step_gradients_match_the_reconstruction():
    model = _orc(temperature=2.0, teacher_lr_scale=0.1)
    x, y = _batch()
    members = list(model.student.members)
    with torch.no_grad():
        logits = [m(x) for m in members]
        t = model.t0(x)
    ce = torch.stack([F.cross_entropy(z, y, reduction="none") for z in logits])
    promoted = promoted_indices(ce, 1)[0]
    error = error_mask(logits, y)
    assert 0 < int(error.sum()) < len(y)  # the batch exercises both parts
    out = model(x, y)
    out.total.backward()
    # T0: 0.1 x CE on E only
    expected_t0 = _param_grad(0.1 * F.cross_entropy(model.t0(x)[error], y[error]), model.t0)
    torch.testing.assert_close(_grads(model.t0), expected_t0)
    # the promoted student: CE on E only, no KD
    expected_p = _param_grad(F.cross_entropy(members[promoted](x)[error], y[error]), members[promoted])
    torch.testing.assert_close(_grads(members[promoted]), expected_p)
    # every other student: CE + T^2 KL(p_G || q), p_G from T0 and the promoted student
    target = group_target([t, logits[promoted]], 2.0)
    for i, member in enumerate(members):
        if i == promoted:
            continue
        z = member(x)
        expected = _param_grad(F.cross_entropy(z, y) + kd(z, target, 2.0), member)
        torch.testing.assert_close(_grads(member), expected)
    # the frozen original teacher never learns
    assert all(p.grad is None for p in model.teacher.parameters())
    assert out.per_sample["error_sample"].tolist() == error.float().tolist()
    assert out.per_sample["refined"].tolist() == error.float().tolist()
    assert set(out.losses) == {"task", "distill", "refine"}


def test_orc_roles_and_step_scalars():
    model = _orc()
    x, y = _batch()
    with torch.no_grad():
        ce = torch.stack([F.cross_entropy(m(x), y, reduction="none") for m in model.student.members])
    promoted = promoted_indices(ce, 1)[0]
    out = model(x, y)
    roles = {k: float(v) for k, v in out.scalars.items() if k.startswith("role/")}
    assert roles == {"role/T0": 1.0, **{f"role/S{i + 1}": float(i == promoted) for i in range(3)}}
    assert out.per_sample["promoted_member"].unique().tolist() == [promoted + 1.0]
    assert float(out.scalars["train/error_count"]) == float(out.per_sample["error_sample"].sum())
    right = (out.per_sample["group_correct"] * out.per_sample["error_sample"]).sum()
    assert float(out.scalars["train/group_correct_on_E"]) == float(right)


def test_empty_error_set_refines_nothing():
    model = _orc()
    x, _ = _batch()
    with torch.no_grad():  # labels = the ensemble's own predictions: E is empty
        y = torch.stack([m(x).softmax(1) for m in model.student.members]).mean(0).argmax(1)
    out = model(x, y)
    assert float(out.losses["refine"]) == 0.0 and float(out.per_sample["refined"].sum()) == 0.0
    out.total.backward()
    assert float(_grads(model.t0).abs().sum()) == 0.0


@pytest.mark.parametrize("mode", ["independent", "kd", "dml"])
def test_control_modes(mode):
    model = _orc(mode=mode, temperature=2.0)
    x, y = _batch()
    out = model(x, y)
    members = list(model.student.members)
    logits = [m(x) for m in members]
    ce_sum = sum(F.cross_entropy(z, y) for z in logits)
    torch.testing.assert_close(out.losses["task"], ce_sum)
    if mode == "independent":
        assert float(out.losses["distill"]) == 0.0
    elif mode == "kd":
        t = model.teacher(x)
        torch.testing.assert_close(out.losses["distill"], sum(kd(z, t, 2.0) for z in logits))
    else:
        expected = sum(torch.stack([kd(logits[i], logits[j].detach(), 2.0, reduction="none")
                                    for j in range(3) if j != i]).mean(0).mean() for i in range(3))
        torch.testing.assert_close(out.losses["distill"], expected)
    out.total.backward()
    assert float(_grads(model.t0).abs().sum()) == 0.0  # T0 is refined only by ORC
    roles = {k: float(v) for k, v in out.scalars.items() if k.startswith("role/")}
    assert roles["role/T0"] == float(mode == "kd")
    assert [roles[f"role/S{i}"] for i in (1, 2, 3)] == [float(mode == "dml")] * 3


def test_select_reports_the_best_member_first_on_ties():
    model = _orc()
    assert model.student.select({"S1": 0.5, "S2": 0.9, "S3": 0.9}) == "S2"
    x = torch.randn(3, *INPUT)
    torch.testing.assert_close(model.student(x), model.student.members[1](x))


# -- config errors -----------------------------------------------------------------------------
@pytest.mark.parametrize("params, field", [
    ({"mood": "orc"}, "distill.params: unknown parameter 'mood'"),
    ({"mode": "mutual"}, "distill.params.mode"),
    ({"students": [{}]}, "distill.params.students"),
    ({"promote": 3}, "distill.params.promote"),
    ({"temperature": 0}, "distill.params.temperature"),
    ({"teacher_lr_scale": -1}, "distill.params.teacher_lr_scale"),
])
def test_bad_params_name_the_field(params, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        orc_settings(params)


def test_bad_member_param_names_the_member():
    cfg = _cfg(students=[{}, {"hiden": 3}])
    with pytest.raises(ConfigError, match=r"distill\.params\.students\.1"):
        ORC(cfg, build_model(cfg.student, INPUT, 3), build_model(cfg.teacher, INPUT, 3), INPUT)


def test_orc_mode_needs_a_teacher():
    """`kd_engine.run.check_method` enforces the need, which depends on the mode."""
    from kd_engine.run import check_method
    from kd_engine.trainers.runtime import SINGLE

    cfg = validate({"method": "orc", "student": {"name": "mlp"}})
    with pytest.raises(ConfigError, match="teacher: method orc"):
        check_method(ORC, cfg, SINGLE)
    check_method(ORC, validate({"method": "orc", "student": {"name": "mlp"},
                                "distill": {"params": {"mode": "independent"}}}), SINGLE)


# -- a short run through the group loop --------------------------------------------------------
def test_short_run_records_roles_members_and_the_reported_student(tmp_path):
    from kd_engine.run import train

    raw = load_raw("configs/orc_digits.yaml")
    raw.update(epochs=2, threads=1, device="cpu", runs_dir=str(tmp_path / "runs"),
               cache_dir=str(tmp_path / "cache"))
    raw["teacher"]["train"]["epochs"] = 1
    run = open_run(train(validate(raw), distributed=False))
    final = run.final_metrics()
    names = ["S1", "S2", "S3", "S4"]
    keys = set(run.scalar_keys())
    assert {f"role/{n}" for n in ["T0", *names]} <= keys
    roles = run.scalars(keys=[f"role/{n}" for n in names])
    per_step = roles.groupby("step")["value"].sum()
    assert (per_step == 1.0).all()  # exactly one student promoted per step
    assert run.scalars(keys=["role/T0"])["value"].eq(1.0).all()
    val = {n: final[f"val/member/{n}_acc"] for n in names}
    reported = run.meta()["reported_student"]
    assert val[reported] == max(val.values())
    assert final["test/student_acc"] == final[f"test/member/{reported}_acc"]
    assert final["test/student_mean_acc"] == pytest.approx(sum(final[f"test/member/{n}_acc"] for n in names) / 4)
    train_rows = run.instances(split="train", columns=["error_sample", "refined", "promoted_member"])
    assert set(train_rows["error_sample"].unique()) <= {0.0, 1.0} and train_rows["error_sample"].sum() > 0
    assert (train_rows["refined"] == train_rows["error_sample"]).all()
    assert set(train_rows["promoted_member"].unique()) <= {1.0, 2.0, 3.0, 4.0}
    # the student checkpoint is the reported member under its own spec
    path = run.checkpoint_path("student")
    info = read_metadata(path)
    assert info["member"] == reported and info["model"] == "mlp"
    member = build_model(type("Spec", (), {"name": info["model"], "params": info["params"]}), (1, 8, 8), 10)
    load_weights(member, path)
    assert final["student_params"] == sum(p.numel() for p in member.parameters())


def test_a_stopped_orc_run_resumes_to_the_uninterrupted_group(tmp_path, monkeypatch):
    """The whole group (teacher T0 refined in place, every student, the reported member) is in
    state.pt: stopped after epoch 0 and resumed, the run ends with the uninterrupted run's weights."""
    from safetensors.torch import load_file

    from conftest import stop_after_epoch
    from kd_engine.run import train
    from kd_engine.trainer import StopRequested, Trainer

    def config(name):
        raw = load_raw("configs/orc_digits.yaml")
        raw.update(epochs=2, threads=1, device="cpu", runs_dir=str(tmp_path / name),
                   cache_dir=str(tmp_path / "cache"))
        raw["teacher"]["train"]["epochs"] = 1
        return validate(raw)

    reference = train(config("a"), distributed=False)
    resume_normally = stop_after_epoch(monkeypatch, Trainer, "_checkpoint", 0)
    with pytest.raises(StopRequested):
        train(config("b"), distributed=False)
    resume_normally()
    (stopped,) = [p for p in (tmp_path / "b").iterdir() if (p / "store.sqlite").is_file()]
    resumed = train(None, resume=stopped, distributed=False)
    sa = torch.load(reference / "checkpoints" / "state.pt", weights_only=True)["distiller"]
    sb = torch.load(resumed / "checkpoints" / "state.pt", weights_only=True)["distiller"]
    assert sa.keys() == sb.keys() and any(k.startswith("t0.") for k in sa)
    for key, value in sa.items():
        assert torch.equal(value, sb[key]), key
    a = load_file(str(reference / "checkpoints" / "student.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "student.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert open_run(resumed).meta()["reported_student"] == open_run(reference).meta()["reported_student"]
