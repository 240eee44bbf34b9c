"""Detection under torchrun: `torchrun --nproc_per_node=2 -m kd_engine.cli train` on the AID
RetinaNet config at smoke size (gloo on the CPU) finishes, and its store holds every training
image's rows exactly once per epoch (one per FPN level), although the odd image count makes
one rank train a padding image each epoch."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import BIN, REPO, run_dirs, subprocess_env
from kd_engine.config import apply_override, load_raw, validate
from kd_engine.data import DATASETS
from kd_engine.store import open_run

N_TRAIN = 7  # odd: one rank trains a padding image each epoch (batches of 2; BatchNorm needs 2)
SMOKE = [f"data.params.n_train={N_TRAIN}", "data.params.n_val=2", "data.params.n_test=2",
         "data.params.image_size=64", "data.batch_size=2", "data.eval_batch_size=4", "epochs=2",
         "threads=1", "device=cpu", "teacher.train.epochs=1", "teacher.params.width=4",
         "teacher.params.depth=1", "teacher.params.fpn_channels=8", "student.params.width=4",
         "student.params.fpn_channels=8", "schedule.warmup_iters=2",
         "teacher.train.schedule.warmup_iters=2", "record.tensorboard=false"]


@pytest.mark.slow
def test_detection_under_torchrun_records_each_image_once_per_epoch(tmp_path: Path):
    overrides = [*SMOKE, f"cache_dir={tmp_path / 'cache'}"]
    args = [a for s in overrides for a in ("--set", s)]
    proc = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node=2", "--standalone", "-m", "kd_engine.cli",
                           "train", str(REPO / "configs" / "aid_retinanet.yaml"), "--runs-dir",
                           str(tmp_path / "runs"), *args],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr

    run_dir = [d for d in run_dirs(tmp_path / "runs") if "-teacher-" not in d.name]
    assert len(run_dir) == 1  # one student run, written by rank 0 only
    run = open_run(run_dir[0])
    assert run.status() == "finished" and run.meta()["world_size"] == 2

    raw = load_raw(REPO / "configs" / "aid_retinanet.yaml")
    for assignment in overrides:
        apply_override(raw, assignment)
    cfg = validate(raw)
    data = DATASETS.get(cfg.data.name)(cfg.data, cfg.seed, cache_dir=cfg.cache_dir)
    train_ids = {int(i) for i in data.train.ids}
    assert len(train_ids) == N_TRAIN
    levels = len(run.meta()["levels"])
    rows = run.instances(split="train", columns=["epoch", "instance_id", "level"])
    assert sorted(rows.epoch.unique()) == [0, 1]
    for epoch, group in rows.groupby("epoch"):
        assert set(group.instance_id) == train_ids, epoch
        assert (group.groupby("instance_id").size() == levels).all(), epoch  # no image twice
        assert not group.duplicated(["instance_id", "level"]).any(), epoch
