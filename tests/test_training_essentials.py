"""The training essentials, unit by unit and through tiny runs: per-term weight schedules, label
smoothing, gradient accumulation, the fp16 gradient scaler, the student EMA, the best-validation
checkpoint and the opt-in speed settings. Known answers are computed here independently (NumPy or
by hand); the runs are digits at 8x8 with a width-4 student and no teacher (a few seconds)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from kd_engine.config import load_config, validate
from kd_engine.errors import ConfigError, NonFiniteLossError
from kd_engine.trainers.checkpoint import read_metadata
from kd_engine.trainers.stepper import Stepper, swapped_in


def scratch_raw(tmp_path, **top) -> dict:
    """A scratch run (no teacher) that takes about a second an epoch on one thread."""
    raw = {"name": "essentials", "method": "scratch", "seed": 0, "device": "cpu", "threads": 1, "epochs": 2,
           "data": {"name": "digits", "batch_size": 128, "val_fraction": 0.2, "test_fraction": 0.2},
           "student": {"name": "resnet", "params": {"width": 4, "depth": 1}},
           "optimizer": {"name": "sgd", "lr": 0.1}, "schedule": {"name": "constant"},
           "record": {"instances": False, "tensorboard": False, "attention_maps": 0},
           "runs_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache")}
    raw.update(top)
    return raw


def train(raw):
    from kd_engine.run import train as run_train
    from kd_engine.store import open_run

    return open_run(run_train(validate(raw), distributed=False))


# -- config --------------------------------------------------------------------------------------
@pytest.mark.parametrize("key, value, needle", [
    ("label_smoothing", 1.0, "label_smoothing"), ("label_smoothing", -0.1, "label_smoothing"),
    ("accumulate_steps", 0, "accumulate_steps"), ("ema", {"decay": 1.0}, "ema.decay"),
    ("ema", {"decay": 0.0}, "ema.decay"), ("amp", "fp8", "amp"),
    ("best_checkpoint", {"metric": "test/student_acc"}, "best_checkpoint.metric"),
    ("best_checkpoint", {"metric": "val/student_acc", "mode": "largest"}, "best_checkpoint.mode"),
])
def test_bad_values_are_one_line_naming_the_field(tmp_path, key, value, needle):
    with pytest.raises(ConfigError) as exc:
        validate(scratch_raw(tmp_path, **{key: value}))
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_old_configs_keep_their_defaults():
    cfg = load_config("configs/digits_kd.yaml")
    assert (cfg.accumulate_steps, cfg.label_smoothing, cfg.ema, cfg.best_checkpoint.metric) == (1, 0.0, None, None)
    assert not (cfg.compile or cfg.channels_last or cfg.sync_batchnorm) and cfg.amp == "auto"
    assert validate(cfg.to_dict()) == cfg  # the stored copy of a config validates to the same config


def test_config_helpers_still_import_from_config():
    from kd_engine import config, config_edit

    assert config.apply_override is config_edit.apply_override
    assert config.resolve_relative_paths is config_edit.resolve_relative_paths
    assert config.rename_deprecated is config_edit.rename_deprecated


# -- per-term weight schedules ---------------------------------------------------------------------
def test_weight_schedule_forms_by_hand():
    from kd_engine.config import WeightSchedule

    warm = WeightSchedule(kind="linear_warmup", epochs=20)
    assert [warm.factor(e) for e in (0, 10, 19, 20, 100)] == pytest.approx([0.05, 0.55, 1.0, 1.0, 1.0])
    linear = WeightSchedule(kind="linear", epochs=10, start=1.0, end=0.0)
    assert [linear.factor(e) for e in (0, 5, 10, 30)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    cosine = WeightSchedule(kind="cosine", epochs=4, start=0.0, end=2.0)
    # end + (start - end)(1 + cos(pi e / 4)) / 2 at e = 0, 1, 2, 4
    assert [cosine.factor(e) for e in (0, 1, 2, 4, 9)] == pytest.approx(
        [0.0, 2 - (1 + math.sqrt(0.5)), 1.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="linear_warmup"):
        WeightSchedule(kind="linear_warmup", start=0.5)


def test_a_cosine_schedule_sets_the_terms_weight_each_epoch(tmp_path):
    from kd_engine.methods import METHODS
    from kd_engine.models import build_model

    raw = scratch_raw(tmp_path, method="standard",
                      teacher={"name": "resnet", "params": {"width": 4, "depth": 1}},
                      distill={"terms": [{"loss": "kd", "weight": 2.0,
                                          "weight_schedule": {"kind": "cosine", "epochs": 2, "start": 1.0,
                                                              "end": 0.0}}]})
    cfg = validate(raw)
    student, teacher = build_model(cfg.student, (1, 8, 8), 10), build_model(cfg.teacher, (1, 8, 8), 10)
    distiller = METHODS.get("standard")(cfg, student, teacher, (1, 8, 8))
    (term,) = distiller.terms
    weights = []
    for epoch in range(3):
        distiller.begin_epoch(epoch, cfg.epochs)
        weights.append(term.weight)
    assert weights == pytest.approx([2.0, 1.0, 0.0])


# -- label smoothing -------------------------------------------------------------------------------
def test_label_smoothing_on_the_task_loss_only(tmp_path):
    from kd_engine.methods import METHODS
    from kd_engine.models import build_model

    torch.manual_seed(0)
    x, y = torch.randn(5, 1, 8, 8), torch.tensor([0, 3, 3, 9, 1])
    outs = {}
    for eps in (0.0, 0.2):
        cfg = validate(scratch_raw(tmp_path, label_smoothing=eps))
        torch.manual_seed(1)
        model = METHODS.get("scratch")(cfg, build_model(cfg.student, (1, 8, 8), 10), None, (1, 8, 8))
        with torch.no_grad():
            outs[eps] = model(x, y)
    logits = outs[0.2].logits.double().numpy()
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    plain = -logp[np.arange(5), y.numpy()]
    smoothed = 0.8 * plain + 0.2 * (-logp.mean(1))  # target: 1 - eps on the label, eps / C on every class
    assert outs[0.2].losses["task"].item() == pytest.approx(smoothed.mean(), rel=1e-5)
    assert outs[0.0].losses["task"].item() == pytest.approx(plain.mean(), rel=1e-5)
    # the recorded per-instance loss stays the plain cross-entropy
    assert np.allclose(outs[0.2].per_sample["student_loss"].numpy(), plain, rtol=1e-5)


# -- the stepper: accumulation, scaler, EMA -------------------------------------------------------
def _linear(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(3, 2)


def _loss(model, x, y):
    return F.cross_entropy(model(x), y)


def _data():
    g = torch.Generator().manual_seed(3)
    return torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g)


def test_two_accumulated_halves_step_like_the_whole_batch():
    x, y = _data()
    whole, halves = _linear(), _linear()
    s1 = Stepper(torch.optim.SGD(whole.parameters(), lr=0.5, momentum=0.9), accumulate=1)
    s2 = Stepper(torch.optim.SGD(halves.parameters(), lr=0.5, momentum=0.9), accumulate=2)
    warmups = []
    for _ in range(3):
        s1.backward(_loss(whole, x, y))
        assert s1.due() and s1.step(lambda: None, lambda n: None)
        for part in (slice(0, 4), slice(4, 8)):
            assert not s2.due()
            s2.backward(_loss(halves, x[part], y[part]))
        assert s2.due() and s2.step(lambda: None, warmups.append)
    assert warmups == [0, 1, 2]  # warm-up sees optimizer steps, not batches
    assert s2.optimizer_steps == 3
    for a, b in zip(whole.parameters(), halves.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_partial_group_steps_with_the_mean_of_what_it_has():
    x, y = _data()
    whole, parts = _linear(), _linear()
    s1 = Stepper(torch.optim.SGD(whole.parameters(), lr=0.5), accumulate=1)
    s1.backward(_loss(whole, x, y))
    s1.step(lambda: None, lambda n: None)
    s3 = Stepper(torch.optim.SGD(parts.parameters(), lr=0.5), accumulate=3)
    for part in (slice(0, 4), slice(4, 8)):  # two of three: the epoch ended
        s3.backward(_loss(parts, x[part], y[part]))
    assert s3.pending == 2 and not s3.due()
    s3.step(lambda: None, lambda n: None)
    for a, b in zip(whole.parameters(), parts.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_the_ema_follows_decay_by_hand_and_swaps_in_for_evaluation():
    from kd_engine.parts.ema import EMATeacher

    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMATeacher(model, 0.5)
    stepper = Stepper(torch.optim.SGD(model.parameters(), lr=1.0), ema=ema, student=model)
    expected_ema, w = 1.0, 1.0
    for _ in range(3):
        stepper.backward(model(torch.ones(1, 1)).sum())  # d/dw = 1: w drops by lr each step
        stepper.step(lambda: None, lambda n: None)
        w -= 1.0
        expected_ema = 0.5 * expected_ema + 0.5 * w
    assert model.weight.item() == pytest.approx(w)
    assert ema.module.weight.item() == pytest.approx(expected_ema)
    with stepper.evaluated() as meta:
        assert meta == {"weights": "ema"} and model.weight.item() == pytest.approx(expected_ema)
    assert model.weight.item() == pytest.approx(w)  # the raw weights are back
    state = stepper.state_dict()
    other = Stepper(torch.optim.SGD(model.parameters(), lr=1.0), ema=EMATeacher(model, 0.5), student=model)
    other.load_state_dict(state, default_steps=0)
    assert other.optimizer_steps == 3 and other.ema.module.weight.item() == pytest.approx(expected_ema)


def test_swapped_in_restores_even_when_the_block_fails():
    a, b = _linear(0), _linear(1)
    before = a.weight.detach().clone()
    with pytest.raises(RuntimeError):
        with swapped_in(a, b):
            assert torch.equal(a.weight, b.weight)
            raise RuntimeError("evaluation failed")
    assert torch.equal(a.weight, before)


def test_the_fp16_scaler_skips_an_overflowing_step_and_counts_it():
    model = _linear()
    before = [p.detach().clone() for p in model.parameters()]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    stepper = Stepper(torch.optim.SGD(model.parameters(), lr=0.1), scaler=scaler)
    stepper.backward(model(torch.full((1, 3), float("inf"))).sum())  # inf gradients
    assert not stepper.step(lambda: None, lambda n: None)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert stepper.skipped == 1 and scaler.get_scale() == 2.0 ** 15
    scalars = stepper.scalars(torch.device("cpu"))
    assert scalars["amp/skipped_steps"].item() == 1 and scalars["amp/scale"].item() == 2.0 ** 15
    x, y = _data()
    stepper.backward(_loss(model, x, y))
    assert stepper.step(lambda: None, lambda n: None)
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    state = stepper.state_dict()
    assert state["scaler"]["scale"] == 2.0 ** 15 and state["skipped_steps"] == 1
    fresh = Stepper(torch.optim.SGD(model.parameters(), lr=0.1), scaler=torch.amp.GradScaler("cpu"))
    fresh.load_state_dict(state, default_steps=0)
    assert fresh.scaler.get_scale() == 2.0 ** 15 and fresh.skipped == 1


def test_precision_settings_on_the_cpu():
    from kd_engine.trainers.runtime import autocast, grad_scaler

    cpu = torch.device("cpu")
    assert grad_scaler(cpu, "off") is None and grad_scaler(cpu, "auto") is None
    for amp in ("fp16", "bf16"):
        with pytest.raises(ConfigError, match=f"amp: {amp} needs a CUDA device"):
            autocast(cpu, amp)


# -- through the trainer --------------------------------------------------------------------------
def test_accumulation_counts_optimizer_steps_and_the_guard_stops_before_any_step(tmp_path, monkeypatch):
    run = train(scratch_raw(tmp_path, epochs=1, accumulate_steps=2, record={"instances": True, "tensorboard": False,
                                                                            "attention_maps": 0}))
    state = torch.load(run.run_dir / "checkpoints" / "state.pt", weights_only=True)
    batches = state["global_step"]
    assert batches >= 3 and state["steps"]["optimizer_steps"] == math.ceil(batches / 2)
    train_rows = run.instances("train")
    assert len(train_rows) == train_rows.instance_id.nunique() == len(set(train_rows.instance_id))
    assert sorted(train_rows.step.unique().tolist()) == list(range(batches))  # one row per instance per batch

    from kd_engine.methods.scratch import Scratch

    calls, steps = {"n": 0}, {"n": 0}
    forward, step = Scratch.forward, torch.optim.SGD.step

    def nan_on_second(self, x, y):
        out = forward(self, x, y)
        calls["n"] += 1
        if calls["n"] == 2:
            out.losses["task"] = out.losses["task"] * float("nan")
        return out

    def counted(self, *args, **kwargs):
        steps["n"] += 1
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Scratch, "forward", nan_on_second)
    monkeypatch.setattr(torch.optim.SGD, "step", counted)
    with pytest.raises(NonFiniteLossError, match="task"):
        train(scratch_raw(tmp_path / "nan", epochs=1, accumulate_steps=2))
    assert steps["n"] == 0  # the first group never stepped: no weight changed


def test_ema_best_checkpoint_and_exact_resume(tmp_path, monkeypatch):
    from conftest import stop_after_epoch
    from kd_engine.run import train as run_train
    from kd_engine.store import open_run
    from kd_engine.trainer import StopRequested, Trainer

    extra = {"epochs": 3, "accumulate_steps": 2, "ema": {"decay": 0.9}, "label_smoothing": 0.1,
             "best_checkpoint": {"metric": "val/student_loss", "mode": "min"}}
    straight = train(scratch_raw(tmp_path / "a", **extra))
    put_back = stop_after_epoch(monkeypatch, Trainer, "_end_of_epoch", 1)
    with pytest.raises(StopRequested):
        run_train(validate(scratch_raw(tmp_path / "b", **extra)), distributed=False)
    put_back()
    (stopped,) = (tmp_path / "b" / "runs").iterdir()
    resumed = open_run(run_train(None, resume=stopped, distributed=False))

    for run in (straight, resumed):
        ckpt = run.run_dir / "checkpoints"
        meta = run.meta()
        assert meta["status"] == "finished" and meta["evaluated_weights"] == "ema"
        assert read_metadata(ckpt / "student.safetensors")["weights"] == "ema"
        state = torch.load(ckpt / "state.pt", weights_only=True)
        ema = state["steps"]["ema"]["module"]
        last = load_file(str(ckpt / "student.safetensors"))
        assert all(torch.equal(last[k], ema[k]) for k in last)  # the exported weights are the EMA's
        raw = {k[len("student."):]: v for k, v in state["distiller"].items() if k.startswith("student.")}
        assert not all(torch.equal(last[k], raw[k]) for k in last)  # and not the raw ones
        # the best epoch is the one of the lowest validation loss, recorded where it is said to be
        val = run.scalars(keys=["val/student_loss"]).sort_values("epoch")
        best_epoch = int(val.epoch.iloc[int(np.argmin(val.value.to_numpy()))])
        best = meta["best_checkpoint"]
        assert (best["metric"], best["mode"], best["epoch"]) == ("val/student_loss", "min", best_epoch)
        assert best["value"] == pytest.approx(val.value.min())
        assert read_metadata(ckpt / "student_best.safetensors")["best"]["epoch"] == best_epoch
        if best_epoch == 2:
            best_weights = load_file(str(ckpt / "student_best.safetensors"))
            assert all(torch.equal(best_weights[k], last[k]) for k in last)

    a, b = (load_file(str(r.run_dir / "checkpoints" / "student.safetensors")) for r in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (torch.load(r.run_dir / "checkpoints" / "state.pt", weights_only=True) for r in (straight, resumed))
    assert sa["steps"]["optimizer_steps"] == sb["steps"]["optimizer_steps"]
    assert all(torch.equal(sa["distiller"][k], sb["distiller"][k]) for k in sa["distiller"])
    assert sa["best"] == sb["best"]


def test_a_best_metric_never_logged_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as exc:
        train(scratch_raw(tmp_path, epochs=1, best_checkpoint={"metric": "val/student_accuracy"}))
    text = str(exc.value)
    assert "\n" not in text and "best_checkpoint.metric" in text and "val/student_accuracy" in text
    assert "val/student_acc" in text  # the metrics that are logged
    with pytest.raises(ConfigError, match="best_checkpoint.metric.*needs a validation split"):
        raw = scratch_raw(tmp_path / "noval", epochs=1, best_checkpoint={"metric": "val/student_acc"})
        raw["data"]["val_fraction"] = 0.0
        train(raw)


def test_channels_last_and_compile_are_opt_in(tmp_path, monkeypatch):
    from kd_engine.models import build_model
    from kd_engine.trainers import speed

    cfg = validate(scratch_raw(tmp_path, channels_last=True, sync_batchnorm=True))
    model = build_model(cfg.student, (1, 8, 8), 10)
    holder = nn.ModuleDict({"student": model})
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1 and m.kernel_size != (1, 1)]
    speed.prepare_models(holder, cfg, distributed=False, device=torch.device("cpu"))
    assert convs and all(w.is_contiguous() for w in convs)  # left off on the CPU (see prepare_models)
    speed.prepare_models(holder, cfg, distributed=False, device=torch.device("cuda"))  # nothing is moved
    assert all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())  # one process: nothing to sync
    with pytest.raises(ConfigError, match="sync_batchnorm"):
        speed.prepare_models(holder, cfg, distributed=True, device=torch.device("cpu"))

    run = train(scratch_raw(tmp_path / "c", epochs=1, channels_last=True))
    assert run.meta()["status"] == "finished"


def test_compile_true_compiles_the_student_in_place(tmp_path, monkeypatch):
    """The wiring: `compile: true` compiles the student (after the EMA copy is made) with the
    module's own `compile`, so names and hooks stay; compiling for real is the cuda tests' job."""
    from kd_engine.parts.ema import EMATeacher
    from kd_engine.trainers import speed
    from kd_engine.trainers.stepper import build_stepper

    compiled = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: compiled.append((self, k.get("backend"))))
    for flag in (False, True):
        cfg = validate(scratch_raw(tmp_path, compile=flag, ema={"decay": 0.5}))
        holder = nn.Module()
        holder.student = _linear()
        stepper = build_stepper(cfg, torch.optim.SGD(holder.student.parameters(), lr=0.1), torch.device("cpu"),
                                holder, False, False, EMATeacher)
        assert type(stepper.ema.module) is nn.Linear
    assert compiled == [(holder.student, speed.COMPILE_BACKEND)]


@pytest.mark.slow
def test_a_compiled_student_trains_on_the_cpu(tmp_path, monkeypatch):
    from kd_engine.models import build_model
    from kd_engine.trainers import speed

    monkeypatch.setattr(speed, "COMPILE_BACKEND", "eager")  # no code generation on the CPU
    run = train(scratch_raw(tmp_path, epochs=1, compile=True))
    assert run.meta()["status"] == "finished"
    weights = load_file(str(run.run_dir / "checkpoints" / "student.safetensors"))
    build_model(validate(scratch_raw(tmp_path)).student, (1, 8, 8), 10).load_state_dict(weights)  # plain keys


def test_label_smoothing_is_refused_where_a_method_builds_its_own_task_loss(tmp_path):
    from kd_engine.methods import METHODS
    from kd_engine.run import check_method
    from kd_engine.trainers.runtime import SINGLE

    cfg = validate(scratch_raw(tmp_path, method="orc", label_smoothing=0.1))
    with pytest.raises(ConfigError) as exc:
        check_method(METHODS.get("orc"), cfg, SINGLE, METHODS)
    assert str(exc.value).startswith("label_smoothing: method orc") and "standard" in str(exc.value)
    check_method(METHODS.get("scratch"), validate(scratch_raw(tmp_path, label_smoothing=0.1)), SINGLE, METHODS)


def test_sync_batchnorm_converts_every_batchnorm_under_ddp(tmp_path):
    """The conversion itself (no process group is needed for it); training with it is on CUDA."""
    from kd_engine.models import build_model
    from kd_engine.trainers.speed import prepare_models

    cfg = validate(scratch_raw(tmp_path, sync_batchnorm=True))
    holder = nn.Module()
    holder.student = build_model(cfg.student, (1, 8, 8), 10)
    params = list(holder.student.parameters())
    batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in holder.modules())
    prepare_models(holder, cfg, distributed=True, device=torch.device("cuda"))  # the module stays on the CPU
    assert batchnorms and sum(isinstance(m, nn.SyncBatchNorm) for m in holder.modules()) == batchnorms
    assert not any(type(m) is nn.BatchNorm2d for m in holder.modules())
    assert all(a is b for a, b in zip(params, holder.student.parameters()))  # the optimizer's objects stay
