"""Resume: a run SIGKILLed mid-epoch and resumed with `kdw train --resume` ends with exactly the
weights of an uninterrupted run, and records every epoch exactly once."""
from __future__ import annotations

import math
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import PYTHON, REPO, kdw, subprocess_env, write_config
from kd_engine.config import validate
from kd_engine.data import build_data
from kd_engine.errors import KDWError
from kd_engine.store import StoreError, open_run

EPOCHS = 3


def start(config, run_id, runs_dir):
    return subprocess.Popen([PYTHON, "-m", "kd_engine.cli", "train", str(config), "--run-id", run_id,
                             "--runs-dir", str(runs_dir)], cwd=REPO, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def saved_epoch(run_dir):
    path = run_dir / "checkpoints" / "state.pt"
    if not path.is_file():
        return None
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # replaced while we read it
        return None


def train_steps_recorded(run_dir, epoch):
    """Steps of `epoch` whose train/loss scalar is in the store (flushed about every second)."""
    try:
        frame = open_run(run_dir).scalars(keys=["train/loss"])
    except StoreError:
        return 0
    return int((frame.epoch == epoch).sum())


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(tmp_path, make_raw, teacher_cache):
    # small batches make an epoch last a couple of seconds, so the kill lands inside one;
    # the cached teacher is passed as a checkpoint since the batch size is part of its cache key
    raw = make_raw({"epochs": EPOCHS, "data.batch_size": 4, "teacher.checkpoint": str(teacher_cache.path),
                    "distill.terms": [{"loss": "kd", "params": {"temperature": 4.0}},
                                      {"loss": "fitnet", "weight": 0.5, "student_layer": "layer2",
                                       "teacher_layer": "layer2", "adapter": "conv1x1"}],
                    "weighting": {"strategy": "teacher_confidence", "params": {"power": 2}}})
    config = write_config(tmp_path / "config.yaml", raw)
    cfg = validate(raw)
    train_ids = set(build_data(cfg.data, cfg.seed).train.ids.tolist())
    steps_per_epoch = math.ceil(len(train_ids) / cfg.data.batch_size)
    runs = tmp_path / "runs"

    reference = start(config, "reference", runs)  # runs alongside: two cores
    victim = start(config, "victim", runs)
    victim_dir = runs / "victim"
    deadline = time.monotonic() + 240
    killed_at = None
    while time.monotonic() < deadline and victim.poll() is None:
        epoch = saved_epoch(victim_dir)
        if epoch is not None and 1 <= epoch < EPOCHS - 1:
            partial = train_steps_recorded(victim_dir, epoch + 1)
            if 0 < partial < steps_per_epoch:  # inside the training loop of the next epoch
                victim.send_signal(signal.SIGKILL)
                killed_at = epoch
                break
        time.sleep(0.02)
    victim.communicate(timeout=30)
    assert killed_at is not None, "the run ended before it could be killed mid-epoch"
    assert victim.returncode == -signal.SIGKILL

    # the kill left a checkpoint for `killed_at` and records of the epoch after it
    assert saved_epoch(victim_dir) == killed_at
    run = open_run(victim_dir)
    assert run.status() == "stale"  # its trainer is gone
    assert run.scalars(keys=["train/loss"]).epoch.max() == killed_at + 1

    resumed = kdw("train", "--resume", "victim", "--runs-dir", runs, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip().splitlines()[-1] == str(victim_dir)
    out, err = reference.communicate(timeout=180)
    assert reference.returncode == 0, err

    # identical final weights
    resumed_weights = load_file(str(victim_dir / "checkpoints" / "student.safetensors"))
    reference_weights = load_file(str(runs / "reference" / "checkpoints" / "student.safetensors"))
    assert resumed_weights.keys() == reference_weights.keys()
    for key in reference_weights:
        assert torch.equal(resumed_weights[key], reference_weights[key]), key
    state = torch.load(victim_dir / "checkpoints" / "state.pt", weights_only=True)
    ref_state = torch.load(runs / "reference" / "checkpoints" / "state.pt", weights_only=True)
    assert state["epoch"] == ref_state["epoch"] == EPOCHS - 1
    assert state["global_step"] == ref_state["global_step"] == EPOCHS * steps_per_epoch
    for key, value in ref_state["distiller"].items():  # adapters included
        assert torch.equal(state["distiller"][key], value), key

    # every epoch recorded exactly once, and the same losses as the uninterrupted run
    run, ref = open_run(victim_dir), open_run(runs / "reference")
    assert run.status() == "finished"
    assert f"resumed at epoch {killed_at + 1}" in run.events().message.tolist()
    records = run.instances(split="train", columns=["epoch", "instance_id", "step", "weight"])
    assert sorted(records.epoch.unique()) == list(range(EPOCHS))
    for epoch, group in records.groupby("epoch"):
        assert len(group) == len(train_ids) and group.instance_id.is_unique, epoch
        assert set(group.instance_id) == train_ids
    assert run.count_instances("val") == EPOCHS * len(build_data(cfg.data, cfg.seed).val)
    losses = run.scalars(keys=["train/loss"])
    assert losses.step.tolist() == list(range(EPOCHS * steps_per_epoch))
    ref_losses = ref.scalars(keys=["train/loss"])
    assert losses.value.tolist() == ref_losses.value.tolist()
    ref_records = ref.instances(split="train", columns=["epoch", "instance_id", "step", "weight"])
    key = ["epoch", "step", "instance_id"]
    assert records.sort_values(key).reset_index(drop=True).equals(
        ref_records.sort_values(key).reset_index(drop=True))
    assert run.final_metrics()["test/student_acc"] == ref.final_metrics()["test/student_acc"]

    # a finished run cannot be resumed again
    from kd_engine.run import train

    with pytest.raises(KDWError, match="already finished"):
        train(None, resume=victim_dir)
