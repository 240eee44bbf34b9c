"""DDP on the CPU (gloo): `torchrun --nproc_per_node=2 -m kd_engine.cli train` finishes, records
every training instance exactly once per epoch, and keeps both replicas identical. One torchrun
run (the CLI with a hook that saves each rank's final parameters) serves both tests."""
from __future__ import annotations

import math
import subprocess
import textwrap
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from conftest import BIN, REPO, digits_raw, run_dirs, subprocess_env, write_config
from kd_engine.config import validate
from kd_engine.data import build_data
from kd_engine.store import open_run

TORCHRUN = [str(BIN / "torchrun"), "--nproc_per_node=2", "--standalone"]


WORKER = textwrap.dedent("""
    # `python -m kd_engine.cli` with a hook that saves every rank's final student parameters.
    import os, runpy
    from safetensors.torch import save_file
    import kd_engine.trainer as trainer

    original = trainer.Trainer.run

    def run(self):
        result = original(self)
        params = {k: v.detach().cpu().contiguous() for k, v in self.student.named_parameters()}
        params["_lr"] = __import__("torch").tensor([g["lr"] for g in self.optimizer.param_groups])
        save_file(params, os.path.join(os.environ["KDW_TEST_DUMP"], f"rank{self.ctx.rank}.safetensors"))
        return result

    trainer.Trainer.run = run
    runpy.run_module("kd_engine.cli", run_name="__main__")
""")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, teacher_cache):
    """One `torchrun --nproc_per_node=2` training run of the CLI; each rank dumps its final student
    parameters and learning rates. The teacher is already in the session cache, so no rank
    trains it."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    raw = digits_raw(tmp_path / "runs", teacher_cache.cache_dir, {"epochs": 2, "schedule": {"name": "cosine"}})
    raw["teacher"]["checkpoint"] = None
    config = write_config(tmp_path / "ddp.yaml", raw)
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    dump = tmp_path / "dump"
    dump.mkdir()
    env = dict(subprocess_env(), KDW_TEST_DUMP=str(dump))
    proc = subprocess.run([*TORCHRUN, str(worker), "train", str(config), "--runs-dir", str(tmp_path / "runs"),
                           "--set", "device=cpu"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return SimpleNamespace(proc=proc, raw=raw, runs_dir=tmp_path / "runs", dump=dump)


@pytest.mark.slow
def test_torchrun_two_processes_records_each_instance_once(ddp_run):
    proc, raw = ddp_run.proc, ddp_run.raw
    assert "Traceback" not in proc.stderr

    (run_dir,) = run_dirs(ddp_run.runs_dir)  # one run, written by rank 0 only
    assert proc.stdout.strip().splitlines() == [str(run_dir)]
    run = open_run(run_dir)
    meta = run.meta()
    assert run.status() == "finished"
    assert meta["world_size"] == 2 and meta["device"] == "cpu"

    cfg = validate(raw)
    data = build_data(cfg.data, cfg.seed)
    train_ids = set(data.train.ids.tolist())
    records = run.instances(split="train", columns=["epoch", "instance_id", "step"])
    assert sorted(records.epoch.unique()) == [0, 1]
    for epoch, group in records.groupby("epoch"):
        assert len(group) == len(train_ids), epoch  # the padding that evens out ranks is not recorded
        assert group.instance_id.is_unique
        assert set(group.instance_id) == train_ids
    assert run.count_instances("val") == 2 * len(data.val)
    assert run.count_instances("test") == len(data.test)
    # each step covers one batch per rank: half as many steps as on one process
    steps_per_epoch = math.ceil(math.ceil(len(train_ids) / 2) / cfg.data.batch_size)
    assert run.scalars(keys=["train/loss"]).step.tolist() == list(range(2 * steps_per_epoch))
    assert records.groupby("step").size().max() <= 2 * cfg.data.batch_size




@pytest.mark.slow
def test_ddp_replicas_stay_identical(ddp_run):
    """Both ranks must apply the same updates: same learning-rate schedule, same parameters."""
    dump = ddp_run.dump
    rank0, rank1 = (load_file(str(dump / f"rank{r}.safetensors")) for r in (0, 1))
    assert torch.equal(rank0.pop("_lr"), rank1.pop("_lr")), "ranks ended with different learning rates"
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    # and rank 0's parameters are what the run saved
    (run_dir,) = run_dirs(ddp_run.runs_dir)
    saved = load_file(str(run_dir / "checkpoints" / "student.safetensors"))
    for key in rank0:
        assert torch.equal(saved[key], rank0[key]), key
