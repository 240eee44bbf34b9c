"""Whole runs on streamed splits (data larger than ``params.memory_mb``, read through a DataLoader
with workers): every training instance is recorded exactly once per epoch, with its source; a
run SIGKILLed mid-epoch with its workers running resumes to the weights of an uninterrupted run;
DDP ranks stream their shares without recording any instance twice; and the CIFAR-100
resnet32x4 -> resnet8x4 config with default recording stays under 4 GB of peak RSS."""
from __future__ import annotations

import json
import signal
import subprocess
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import BIN, PYTHON, REPO, digits_raw, run_dirs, subprocess_env, write_config
from kd_engine.config import load_raw, validate
from kd_engine.data import build_data
from kd_engine.data.base import ItemInstanceDataset
from kd_engine.store import open_run

WORKERS = {"num_workers": 2, "prefetch_factor": 2}
SMALL = {"teacher.params": {"width": 8, "depth": 1}, "student.params": {"width": 4, "depth": 1},
         "teacher.train.epochs": 1, "record.tensorboard": False, "record.attention_maps": 2,
         "record.feature_probe_size": 8}


def fake_raw(runs, cache, **overrides):
    """FakeData too large for its (tiny) memory budget, so every split streams."""
    data = {"name": "fakedata", "augment": "cifar", "batch_size": 8, "eval_batch_size": 16, "loader": WORKERS,
            "params": {"train_size": 47, "test_size": 12, "num_classes": 3, "memory_mb": 0.001}}
    return digits_raw(runs, cache, {"epochs": 2, "data": data, **SMALL, **overrides})


def assert_each_instance_once(run, data, epochs):
    train_ids = set(data.train.ids.tolist())
    records = run.instances(split="train", columns=["epoch", "instance_id"])
    assert sorted(records.epoch.unique()) == list(range(epochs))
    for epoch, group in records.groupby("epoch"):
        assert len(group) == len(train_ids) and group.instance_id.is_unique, epoch
        assert set(group.instance_id) == train_ids, epoch
    return records


@pytest.fixture(scope="module")
def fake_teacher(tmp_path_factory):
    """The streamed FakeData config's teacher, trained once (streaming too) into a shared cache."""
    from kd_engine.run import build_teacher

    root = tmp_path_factory.mktemp("stream_teacher")
    cfg = validate(fake_raw(root / "runs", root / "cache"))
    build_teacher(cfg, (3, 32, 32), 3)
    return root / "cache"


def test_streamed_image_folder_trains_with_workers_and_records_each_instance_once(tmp_path):
    from kd_engine.run import train

    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for split, count in (("train", 10), ("val", 3)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for k in range(count):
                pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{k}.png")
    data = {"name": "imagefolder", "root": str(root), "image_size": 12, "augment": "cifar", "batch_size": 4,
            "params": {"memory_mb": 0.0001}, "loader": WORKERS}
    raw = digits_raw(tmp_path / "runs", tmp_path / "cache", {"epochs": 2, "data": data, **SMALL})
    cfg = validate(raw)
    bundle = build_data(cfg.data, cfg.seed)
    assert isinstance(bundle.train, ItemInstanceDataset)  # streamed, not materialised
    run = open_run(train(cfg, distributed=False))
    assert run.meta()["status"] == "finished"
    assert_each_instance_once(run, bundle, 2)
    sources = run.meta()["sources"]  # id -> file, kept for streamed data too
    assert {sources[str(i)] for i in bundle.train.ids.tolist()} <= {
        f"train/{c}/{k}.png" for c in ("cat", "dog") for k in range(10)}
    assert run.count_instances("test") == 6 and not run.features().empty


@pytest.mark.slow
def test_killed_streaming_run_with_workers_resumes_to_identical_weights(tmp_path, fake_teacher):
    from kd_engine.run import train

    raw = fake_raw(tmp_path / "runs", fake_teacher)
    cfg = validate(raw)
    config = write_config(tmp_path / "stream.yaml", raw)
    steps = -(-len(build_data(cfg.data, cfg.seed).train) // cfg.data.batch_size)
    kill_at = steps + 3  # the 3rd batch of epoch 1: mid-epoch, epoch 0 checkpointed, workers busy
    env = dict(subprocess_env(), KDW_FAULT=f"train_batch:{kill_at}")
    victim = subprocess.run([PYTHON, "-m", "kd_engine.cli", "train", str(config), "--run-id", "victim"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert victim.returncode == -signal.SIGKILL, victim.stderr[-2000:]
    victim_dir = tmp_path / "runs" / "victim"
    state = torch.load(victim_dir / "checkpoints" / "state.pt", weights_only=True)
    assert state["epoch"] == 0 and state["global_step"] == steps

    resumed = subprocess.run([PYTHON, "-m", "kd_engine.cli", "train", "--resume", "victim", "--runs-dir",
                              str(tmp_path / "runs")], cwd=REPO, env=subprocess_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    reference_dir = train(cfg, distributed=False, run_id="reference")

    got = load_file(str(victim_dir / "checkpoints" / "student.safetensors"))
    want = load_file(str(reference_dir / "checkpoints" / "student.safetensors"))
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    run, ref = open_run(victim_dir), open_run(reference_dir)
    assert "resumed at epoch 1" in run.events().message.tolist()
    records = assert_each_instance_once(run, build_data(cfg.data, cfg.seed), 2)
    ref_records = ref.instances(split="train", columns=["epoch", "instance_id"])
    key = ["epoch", "instance_id"]
    assert records.sort_values(key).reset_index(drop=True).equals(ref_records.sort_values(key).reset_index(drop=True))
    assert run.scalars(keys=["train/loss"]).value.tolist() == ref.scalars(keys=["train/loss"]).value.tolist()


@pytest.mark.slow
def test_ddp_ranks_stream_their_shares_and_record_each_instance_once(tmp_path, fake_teacher):
    raw = fake_raw(tmp_path / "runs", fake_teacher, epochs=1)
    config = write_config(tmp_path / "ddp.yaml", raw)
    proc = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node=2", "--standalone", "-m", "kd_engine.cli",
                           "train", str(config), "--set", "device=cpu"], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path / "runs")
    run = open_run(run_dir)
    assert run.meta()["world_size"] == 2 and run.status() == "finished"
    cfg = validate(raw)
    data = build_data(cfg.data, cfg.seed)
    assert len(data.train) % 2 == 1  # odd: one rank's last batch holds padding, never recorded
    assert_each_instance_once(run, data, 1)


RSS_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import torch
    from kd_engine.config import validate
    from kd_engine.models import build_model
    from kd_engine.run import train
    from kd_engine.store import open_run
    from kd_engine.trainers.checkpoint import save_weights

    raw, teacher_path = json.loads(sys.argv[1]), sys.argv[2]
    torch.manual_seed(0)  # an untrained teacher of the real architecture: memory, not accuracy
    save_weights(build_model(validate(raw).teacher, (3, 32, 32), 100), teacher_path, {"model": "resnet32x4"})
    raw["teacher"]["checkpoint"] = teacher_path
    run = open_run(train(validate(raw), distributed=False))
    print(json.dumps({"status": run.meta()["status"], "features": len(run.features()),
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


@pytest.mark.slow
def test_cifar100_resnet32x4_to_resnet8x4_with_default_recording_stays_under_4gb(tmp_path):
    """The shipped config as a user runs it, on FakeData of CIFAR-100's shape at 32 px, with the
    default recording (per-instance rows, feature disparity of the shared layers on the probe,
    attention maps): it finishes, records its features, and the process peaks under 4 GB (the
    feature-space CKA this replaced asked for 34 GB here, whatever the probe's size; the probe
    is the 64 validation images, to keep the test short; a 256-image probe peaked at 1.6 GB)."""
    raw = load_raw(REPO / "configs" / "cifar100" / "kd" / "resnet32x4_resnet8x4.yaml")
    assert "record" not in raw  # the default recording
    # 64 validation images (the feature probe), 64 training images: one step
    raw["data"] = {"name": "fakedata", "image_size": 32, "augment": "cifar", "val_fraction": 0.5, "batch_size": 64,
                   "params": {"train_size": 128, "test_size": 16, "num_classes": 100}}
    raw.update(epochs=1, device="cpu", threads=1, runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"))
    proc = subprocess.run([PYTHON, "-c", RSS_SCRIPT, json.dumps(raw), str(tmp_path / "teacher.safetensors")],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(result)
    assert result["status"] == "finished" and result["features"] > 0
    assert result["peak_mb"] < 4096, result
