"""The paper-scale configs under configs/cifar100 and configs/imagenet: each validates, and each
runs two optimisation steps (teacher and student) through the real engine on FakeData of its
dataset's shape, so a typo, a wrong layer name or a shape mismatch in a benchmark config never
waits for a GPU to show up. DKD's warm-up is checked on its config.

The two-step runs are kept cheap: 8 fake images in batches of 4, one thread, no per-instance or
feature recording, and each teacher trained once for one epoch into a cache shared by all runs.
ImageNet configs run at 224 px, the shape they train on (34 s for the six on a quiet machine)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from kd_engine.checks import check_names
from kd_engine.config import load_config, load_raw, validate

ROOT = Path(__file__).resolve().parent.parent / "configs"
CONFIGS = sorted((ROOT / "cifar100").rglob("*.yaml"))
IMAGENET = sorted((ROOT / "imagenet").rglob("*.yaml"))
IMAGENET_SMOKE_SIZE = 224  # the shape the configs train on
NO_RECORDING = {"instances": False, "eval_instances": False, "feature_probe_size": 2, "attention_maps": 0,
                "tensorboard": False}


def smoke(image_size: int, num_classes: int, augment: str) -> dict:
    """FakeData of the benchmark's shape: 8 training images in batches of 4 (two steps), 2 test images."""
    return {"data": {"name": "fakedata", "image_size": image_size, "val_fraction": 0.0, "batch_size": 4,
                     "eval_batch_size": 4, "augment": augment,
                     "params": {"train_size": 8, "test_size": 2, "num_classes": num_classes}},
            "epochs": 1, "device": "cpu", "threads": 1, "record": NO_RECORDING}


def test_every_method_and_pair_is_there():
    names = {(p.parent.name, p.stem) for p in CONFIGS}
    methods = {"kd", "dkd", "dist", "dot", "fitnet", "at", "rkd", "pkt", "sp", "nst", "cc", "vid", "ofd", "crd",
               "reviewkd"}
    pairs = {"resnet32x4_resnet8x4", "wrn_40_2_wrn_16_2", "vgg13_vgg8", "resnet50_cifar_mobilenetv2_cifar"}
    # KDSVD compares maps channel for channel: only the pairs of equal widths
    kdsvd = {("kdsvd", p) for p in pairs if p != "resnet50_cifar_mobilenetv2_cifar"}
    assert names == {(m, p) for m in methods for p in pairs} | kdsvd
    assert {(p.parent.name, p.stem) for p in IMAGENET} == {
        (m, p) for m in ("kd", "dkd", "dist") for p in ("resnet34_resnet18", "resnet50_mobilenet_v2")}


@pytest.mark.parametrize("path", IMAGENET, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_imagenet_config_follows_torchvisions_recipe(path):
    cfg = load_config(path)
    check_names(cfg)
    assert (cfg.epochs, cfg.data.batch_size, cfg.data.name, cfg.data.augment) == (100, 256, "imagefolder", "imagenet")
    assert cfg.schedule.name == "multistep" and cfg.schedule.milestones == [30, 60, 90]
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.1, 0.9, 1e-4)
    assert cfg.teacher.name == cfg.student.name == "torchvision" and cfg.teacher.checkpoint is None


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_follows_the_protocol(path):
    cfg = load_config(path)
    check_names(cfg)
    assert (cfg.epochs, cfg.data.batch_size, cfg.data.name, cfg.data.augment) == (240, 64, "cifar100", "cifar")
    assert cfg.schedule.name == "multistep" and cfg.schedule.milestones == [150, 180, 210]
    assert cfg.optimizer.weight_decay == 5e-4 and cfg.optimizer.momentum == 0.9
    small = cfg.student.name.startswith(("mobilenet", "shufflenet"))
    assert cfg.optimizer.lr == (0.01 if small else 0.05)


@pytest.fixture(scope="module")
def shared_dirs(tmp_path_factory):
    """One teacher cache for all configs: the four teachers train once (one epoch each). Removed
    after the module: the ImageNet-shaped checkpoints take gigabytes, and pytest keeps the last
    three sessions' temporary folders."""
    dirs = tmp_path_factory.mktemp("bench_runs"), tmp_path_factory.mktemp("bench_cache")
    yield dirs
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS + IMAGENET, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}/{p.stem}")
def test_config_runs_two_steps_on_fakedata(path, shared_dirs):
    from kd_engine.store import open_run
    from kd_engine.run import train

    raw = load_raw(path)
    imagenet = path in IMAGENET
    raw.update(smoke(IMAGENET_SMOKE_SIZE if imagenet else 32, 1000 if imagenet else 100, raw["data"]["augment"]))
    raw["teacher"]["train"]["epochs"] = 1  # an untrained-but-real teacher: shapes, not accuracy
    raw["runs_dir"], raw["cache_dir"] = str(shared_dirs[0]), str(shared_dirs[1])
    run_dir = train(validate(raw, str(path)), distributed=False)
    try:
        run = open_run(run_dir)
        assert run.meta()["status"] == "finished"
        steps = run.scalars(keys=["train/loss"])
        assert sorted(steps.step.unique().tolist()) == [0, 1]
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)  # its checkpoints; the teacher cache stays


def test_dkd_warmup_weight_at_epochs_0_10_20():
    """DKD ramps its term linearly over 20 epochs (epoch e from 0 weighs (e + 1)/20); the
    distillation loss scales with it while the term's own per-sample value does not."""
    from kd_engine.methods import METHODS
    from kd_engine.models import build_model

    cfg = load_config(next(p for p in CONFIGS if p.parent.name == "dkd" and p.stem == "resnet32x4_resnet8x4"))
    torch.manual_seed(0)
    student = build_model(cfg.student, (3, 32, 32), 100)
    teacher = build_model(cfg.teacher, (3, 32, 32), 100)
    distiller = METHODS.get("standard")(cfg, student, teacher, (3, 32, 32)).eval()
    (term,) = distiller.terms
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    out = {}
    for epoch, expected in ((0, 0.05), (10, 0.55), (20, 1.0), (239, 1.0)):
        distiller.begin_epoch(epoch, cfg.epochs)
        assert term.weight == pytest.approx(expected)
        with torch.no_grad():
            out[epoch] = distiller(x, y)
    per_sample = out[0].per_sample["term_dkd"]
    assert torch.allclose(per_sample, out[20].per_sample["term_dkd"])
    assert out[0].losses["distill"].item() == pytest.approx(0.05 * per_sample.mean().item(), rel=1e-5)
    assert out[10].losses["distill"].item() == pytest.approx(0.55 * per_sample.mean().item(), rel=1e-5)
    assert out[20].losses["distill"].item() == pytest.approx(per_sample.mean().item(), rel=1e-5)
