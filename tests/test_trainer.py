"""End-to-end training on digits: what `kdw train` records (one record per instance per epoch,
losses that can be recomputed from the records, TensorBoard events), the CLI views of a finished
run, the teacher cache, and a NaN loss stopping the run cleanly."""
from __future__ import annotations

import glob
import json
import math
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import BIN, REPO, digits_raw, run_dirs, subprocess_env, write_config
from kd_engine.cache import teacher_cache_path
from kd_engine.run import build_teacher
from kd_engine.config import validate
from kd_engine.data import build_data
from kd_engine.errors import CheckpointError, NonFiniteLossError
from kd_engine.losses import kd
from kd_engine.losses.terms import register_term
from kd_engine.store import list_runs, open_run
from kd_engine.run import train

KD_TERMS = [
    {"loss": "kd", "weight": 1.0, "params": {"temperature": 4.0}},
    {"loss": "fitnet", "weight": 0.5, "student_layer": "layer2", "teacher_layer": "layer2",
     "adapter": "conv1x1"},
]
WEIGHTING = {"strategy": "teacher_confidence", "params": {"source": "max", "power": 2.0}}


def kdw_script(*args, timeout=120):
    """Run the installed `kdw` console script."""
    return subprocess.run([str(BIN / "kdw"), *map(str, args)], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, teacher_cache):
    """One `kdw train` run: two distillation terms, teacher-confidence weighting, 2 epochs."""
    root = tmp_path_factory.mktemp("trainer")
    raw = digits_raw(root / "unused", teacher_cache.cache_dir,
                     {"distill.terms": KD_TERMS, "weighting": WEIGHTING})
    path = write_config(root / "config.yaml", raw)
    proc = kdw_script("train", path, "--runs-dir", root / "runs", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    runs = run_dirs(root / "runs")
    assert len(runs) == 1, runs  # the cached teacher was reused: no teacher run
    assert proc.stdout.strip().splitlines()[-1] == str(runs[0])
    return runs[0], validate(raw)


def test_cli_train_finishes_with_one_record_per_instance_per_epoch(cli_run):
    run_dir, cfg = cli_run
    run = open_run(run_dir)
    assert run.status() == "finished"
    assert run.meta()["epochs"] == 2 and run.meta()["world_size"] == 1
    train_ids = set(build_data(cfg.data, cfg.seed).train.ids.tolist())
    records = run.instances(split="train", columns=["epoch", "instance_id", "step"])
    assert sorted(records.epoch.unique().tolist()) == [0, 1]
    for epoch, group in records.groupby("epoch"):
        assert len(group) == len(train_ids), epoch
        assert group.instance_id.is_unique
        assert set(group.instance_id.tolist()) == train_ids
    # the test split is recorded once at the end, val once per epoch
    data = build_data(cfg.data, cfg.seed)
    assert run.count_instances("test") == len(data.test)
    assert run.count_instances("val") == 2 * len(data.val)


def test_weighted_distillation_loss_recomputes_from_records(cli_run):
    run_dir, cfg = cli_run
    run = open_run(run_dir)
    records = run.instances(split="train")
    assert {"term_kd", "term_fitnet", "weight", "distill_loss", "teacher_conf", "student_loss"} <= set(records)
    # weights are not trivially 1: teacher confidence squared, as recorded
    assert records.weight.std() > 1e-3 and (records.weight < 1).any()
    assert np.allclose(records.weight, records.teacher_conf ** 2, rtol=1e-5, atol=0)
    # distill_loss = sum over terms of term weight x term value
    expected = 1.0 * records.term_kd + 0.5 * records.term_fitnet
    assert np.allclose(records.distill_loss, expected, rtol=1e-5, atol=1e-7)

    scalars = run.scalars(keys=["train/distill", "train/task", "train/loss"])
    by_step = {key: dict(zip(group.step, group.value)) for key, group in scalars.groupby("key")}
    steps = sorted(records.step.unique())
    assert steps == sorted(by_step["train/distill"])  # every step has its scalar and its records
    for step in steps[:: max(1, len(steps) // 8)] + [steps[-1]]:
        batch = records[records.step == step]
        weighted = float((batch.weight * batch.distill_loss).mean())
        assert weighted == pytest.approx(by_step["train/distill"][step], rel=1e-5), step
        task = cfg.distill.task_weight * float(batch.student_loss.mean())
        assert task == pytest.approx(by_step["train/task"][step], rel=1e-5)
        assert by_step["train/loss"][step] == pytest.approx(
            by_step["train/task"][step] + by_step["train/distill"][step], rel=1e-5)


def test_features_and_attention_are_recorded(cli_run):
    run = open_run(cli_run[0])
    features = run.features()
    assert set(features.epoch) == {0, 1}
    assert {("layer2", "layer2")} == set(zip(features.student_layer, features.teacher_layer))
    maps = run.artifacts("attention_map")
    assert {"student", "teacher"} == set(maps.role)
    assert run.load_artifact(maps.name.iloc[0]).ndim == 3
    assert len(run.images([0, 1, 2])) == 3


def test_tensorboard_events_are_written(cli_run):
    events = glob.glob(str(cli_run[0] / "tb" / "events.out.tfevents.*"))
    assert events and all(Path(e).stat().st_size > 0 for e in events)


def test_kdw_runs_json_and_show(cli_run):
    run_dir, _ = cli_run
    listed = kdw_script("runs", "--json", "--runs-dir", run_dir.parent)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["run_id"] for r in rows] == [run_dir.name]
    row = rows[0]
    assert row["status"] == "finished" and row["method"] == "standard"
    assert 0 < row["test/student_acc"] <= 1 and 0 < row["test/teacher_acc"] <= 1

    shown = kdw_script("show", run_dir.name[:15], "--runs-dir", run_dir.parent)
    assert shown.returncode == 0, shown.stderr
    assert f"run       {run_dir.name}  [finished]" in shown.stdout
    test_acc = [line for line in shown.stdout.splitlines() if line.startswith("test acc")]
    assert len(test_acc) == 1
    teacher_acc, student_acc = map(float, test_acc[0].split()[2:4])
    assert teacher_acc == pytest.approx(row["test/teacher_acc"], abs=1e-4)
    assert student_acc == pytest.approx(row["test/student_acc"], abs=1e-4)
    as_json = json.loads(kdw_script("show", run_dir.name, "--json", "--runs-dir", run_dir.parent).stdout)
    assert as_json["status"] == "finished"
    assert as_json["final_metrics"]["test/student_acc"] == pytest.approx(row["test/student_acc"])

    missing = kdw_script("show", "no-such-run", "--runs-dir", run_dir.parent)
    assert missing.returncode == 2 and missing.stderr.startswith("error: run 'no-such-run'")
    assert "Traceback" not in missing.stderr


def test_engine_modules_import_in_any_order():
    """`kd_engine.cache` (and the checkpoint helpers) import on their own, without a cycle."""
    saved = {name: module for name, module in sys.modules.items() if name.startswith("kd_engine")}
    try:
        for first in ("kd_engine.cache", "kd_engine.trainers.checkpoint", "kd_engine.trainer", "kd_engine.run",
                      "kd_engine.trainers", "kd_engine.store", "kd_engine.methods"):
            for name in [n for n in sys.modules if n.startswith("kd_engine")]:
                del sys.modules[name]
            __import__(first)
    finally:
        for name in [n for n in sys.modules if n.startswith("kd_engine")]:
            del sys.modules[name]
        sys.modules.update(saved)


# -- NaN ------------------------------------------------------------------------------------------
def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, make_raw, capsys):
    from kd_engine.cli import main

    raw = make_raw({"epochs": 3})
    cfg = validate(raw)
    steps_per_epoch = math.ceil(len(build_data(cfg.data, cfg.seed).train) / cfg.data.batch_size)
    calls = {"n": 0}

    def nan_after_first_epoch(s_logits, t_logits, reduction="mean"):
        calls["n"] += 1
        value = kd(s_logits, t_logits, reduction=reduction)
        return value * float("nan") if calls["n"] > steps_per_epoch else value

    name = f"nan_test_{uuid.uuid4().hex[:8]}"
    register_term(name, nan_after_first_epoch, "logits")
    raw["distill"]["terms"].append({"loss": name, "weight": 1.0})
    path = write_config(tmp_path / "nan.yaml", raw)

    # in-process, so the test-only term is registered: the CLI prints one line and exits 2
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith("error: non-finite loss (distill) at epoch 1 step "), message
    assert "last good checkpoint" in message

    (run_dir,) = run_dirs(tmp_path / "runs")
    run = open_run(run_dir)
    assert run.status() == "failed"
    assert run.meta()["error"].startswith("non-finite loss (distill) at epoch 1")
    assert any("non-finite" in m for m in run.events().message)
    state = torch.load(run_dir / "checkpoints" / "state.pt", weights_only=True)
    assert state["epoch"] == 0 and state["global_step"] == steps_per_epoch
    student = load_file(str(run_dir / "checkpoints" / "student.safetensors"))
    assert student and all(torch.isfinite(t.float()).all() for t in student.values())
    for key, tensor in student.items():
        assert torch.equal(tensor, state["distiller"][f"student.{key}"]), key
    # only the epoch that finished is recorded
    assert run.instance_epochs("train") == [0]

    # the direct API raises the typed error
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        calls["n"] = 0
        train(validate(raw))


# -- teacher cache --------------------------------------------------------------------------------
def test_teacher_cache_is_reused_and_keyed_by_teacher_settings(tmp_path):
    runs, cache = tmp_path / "runs", tmp_path / "cache"
    raw = digits_raw(runs, cache, {"epochs": 1, "teacher.params.width": 8, "teacher.train.epochs": 1})
    first = train(validate(raw))
    teacher_runs = run_dirs(runs, "")
    teacher_runs = [p for p in teacher_runs if p != first]
    assert len(teacher_runs) == 1 and open_run(teacher_runs[0]).meta()["method"] == "scratch"
    cached = list((cache / "teachers").glob("*.safetensors"))
    assert cached == [teacher_cache_path(validate(raw))]
    assert open_run(first).meta()["teacher_source"] == str(cached[0])

    # same teacher settings, different student and run settings: the cache is reused
    raw2 = digits_raw(runs, cache, {"epochs": 1, "teacher.params.width": 8, "teacher.train.epochs": 1,
                                    "student.params.width": 4, "data.eval_batch_size": 100,
                                    "distill.terms.0.params.temperature": 2.0})
    second = train(validate(raw2))
    assert len(run_dirs(runs)) == 3  # first, second and the one teacher run
    assert open_run(second).meta()["teacher_source"] == str(cached[0])
    used = load_file(str(second / "checkpoints" / "teacher.safetensors"))
    stored = load_file(str(cached[0]))
    assert used.keys() == stored.keys() and all(torch.equal(used[k], stored[k]) for k in used)

    # a change to what defines the teacher makes (and trains) a new cache entry
    raw3 = digits_raw(runs, cache, {"epochs": 1, "teacher.params.width": 4, "teacher.train.epochs": 1})
    _, source = build_teacher(validate(raw3), (1, 8, 8), 10)
    assert source == str(teacher_cache_path(validate(raw3))) and source != str(cached[0])
    assert len(list((cache / "teachers").glob("*.safetensors"))) == 2
    assert len([p for p in run_dirs(runs) if "teacher" in p.name]) == 2
    for key, value in (("teacher.train.optimizer.lr", 0.01), ("teacher.train.seed", 1),
                       ("data.batch_size", 32), ("data.split_seed", 5)):
        changed = digits_raw(runs, cache, {"teacher.params.width": 8, "teacher.train.epochs": 1, key: value})
        assert teacher_cache_path(validate(changed)) != cached[0], key


def test_teacher_checkpoint_for_another_model_is_a_checkpoint_error(tmp_path, teacher_cache, make_raw):
    # the session teacher is resnet width 16; ask for width 8
    raw = make_raw({"teacher.params.width": 8, "teacher.checkpoint": str(teacher_cache.path)})
    with pytest.raises(CheckpointError) as info:
        train(validate(raw))
    message = str(info.value)
    assert message.startswith("teacher.checkpoint: ") and "\n" not in message
    assert str(teacher_cache.path) in message

    # a safetensors file without metadata that does not fit the model
    foreign = tmp_path / "foreign.safetensors"
    save_file({"fc.weight": torch.zeros(3, 3)}, str(foreign))
    raw = make_raw({"teacher.checkpoint": str(foreign)})
    with pytest.raises(CheckpointError, match=r"^teacher.checkpoint: .*does not fit the model"):
        train(validate(raw))
    # not a safetensors file at all
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"^teacher.checkpoint: .*not a readable safetensors"):
        train(validate(make_raw({"teacher.checkpoint": str(junk)})))
    assert run_dirs(tmp_path / "runs") == []

    # the matching checkpoint is used as given
    run_dir = train(validate(make_raw({"epochs": 1, "teacher.checkpoint": str(teacher_cache.path)})))
    assert open_run(run_dir).meta()["teacher_source"] == str(teacher_cache.path)
    assert list_runs(tmp_path / "runs").status.tolist() == ["finished"]
