"""Detection runs end to end at smoke size (64-px scenes, 8 training images, one epoch): the shipped
AID configs train through `kdw train`, record one row per (image, FPN level) whose weight is
exp(−α·teacher loss), the controls record the weights they used, resume continues a stopped run
to the same weights, and a malformed COCO file fails in one line before a run exists."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import REPO, kdw, write_config
from kd_engine.config import apply_override, load_raw, validate
from kd_engine.data.detection import detection_collate, generate_scenes, write_scenes
from kd_engine.data.detection.builders import build_coco, build_scenes, scenes_dir
from kd_engine.errors import ConfigError
from kd_engine.methods.detection_base import student_pass
from kd_engine.models.detection import build_detector, freeze_batchnorm
from kd_engine.store import open_run
from kd_engine.run import train
from kd_engine.trainer import Trainer
from kd_engine.trainer import StopRequested
from kd_engine.weighting import build_weighting

ALPHA = 0.1
N_TRAIN = 8
SMOKE = ["data.params.n_train=8", "data.params.n_val=4", "data.params.n_test=4",
         "data.params.image_size=64", "data.batch_size=4", "data.eval_batch_size=8", "epochs=1",
         "threads=1", "teacher.train.epochs=1", "teacher.params.width=8", "teacher.params.depth=1",
         "teacher.params.fpn_channels=16", "student.params.width=4",
         "student.params.fpn_channels=16", "schedule.warmup_iters=2",
         "teacher.train.schedule.warmup_iters=2", "record.tensorboard=false"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Shared by this module's tests, so the smoke teacher trains once and is then cached."""
    return tmp_path_factory.mktemp("detection")


def smoke_cfg(workdir: Path, name: str, overrides: list[str] = ()):
    raw = load_raw(REPO / "configs" / f"{name}.yaml")
    for assignment in [*SMOKE, f"runs_dir={workdir / 'runs'}", f"cache_dir={workdir / 'cache'}",
                       *overrides]:
        apply_override(raw, assignment)
    return validate(raw)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["aid_retinanet", "aid_fasterrcnn"])
def test_shipped_config_trains_at_smoke_size(workdir, name):
    args = [a for s in [*SMOKE, f"cache_dir={workdir / 'cache'}"] for a in ("--set", s)]
    result = kdw("train", REPO / "configs" / f"{name}.yaml", "--runs-dir", workdir / "runs", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    run = open_run(Path(result.stdout.strip().splitlines()[-1]))
    assert run.status() == "finished"
    levels = run.meta()["levels"]
    rows = run.instances("train")
    assert len(rows) == N_TRAIN * len(levels)  # one row per (image, level)
    per_image = rows.groupby("instance_id")["level"].apply(lambda s: sorted(s.astype(int).tolist()))
    assert all(found == list(range(len(levels))) for found in per_image)
    np.testing.assert_allclose(rows.weight, np.exp(-ALPHA * rows.teacher_loss), rtol=1e-5)
    np.testing.assert_allclose(rows.teacher_loss, rows.teacher_cls + rows.teacher_box, rtol=1e-5)
    assert (rows.weight == rows.aid_weight).all()
    for column in ("term_am", "term_at_ch", "term_at_sp", "term_nl", "distill_loss"):
        assert rows[column].notna().all() and (rows[column] >= 0).all()
    single_stage = name == "aid_retinanet"  # Faster R-CNN reports only batch-reduced losses
    assert rows.student_loss.notna().all() == single_stage
    metrics = run.final_metrics()
    for key in ("test/student_mAP", "test/student_AP50", "test/teacher_mAP", "val/student_mAP"):
        assert 0.0 <= metrics[key] <= 1.0
    keys = set(run.scalar_keys())
    assert {"train/loss", "train/distill", "train/student_cls", "train/teacher_loss",
            "train/term/am", "train/term/nl", "train/weight_mean", "lr"} <= keys
    boxes = run.load_artifact("gt_boxes")
    assert boxes.shape[1] == 6 and set(boxes[:, 1]) <= {1, 2, 3}  # image_id, label, x0, y0, x1, y1
    assert set(boxes[:, 0].astype(int)) & set(rows.instance_id)
    assert set(rows.instance_id) <= set(run.images(rows.instance_id.unique()))


@pytest.mark.parametrize("weighting, expect", [
    ({"strategy": "uniform", "params": {}}, "ones"),
    ({"strategy": "uniform", "params": {"value": 0.9}}, "constant"),
    ({"strategy": "aid", "params": {"alpha": ALPHA, "shuffle": True, "seed": 3}}, "shuffled"),
])
def test_control_arms_record_the_weights_they_used(workdir, weighting, expect):
    cfg = smoke_cfg(workdir, "aid_retinanet").model_copy(update={"name": f"control-{expect}"})
    cfg.weighting = cfg.weighting.model_validate(weighting)
    rows = open_run(train(cfg)).instances("train")
    if expect == "ones":
        assert (rows.weight == 1.0).all()
    elif expect == "constant":
        np.testing.assert_allclose(rows.weight, 0.9, rtol=1e-6)
    else:
        np.testing.assert_allclose(rows.aid_weight, np.exp(-ALPHA * rows.teacher_loss), rtol=1e-5)
        for _, step in rows.groupby("step"):  # the same weights, assigned to other (image, level)s
            np.testing.assert_array_equal(np.sort(step.weight), np.sort(step.aid_weight))
        assert (rows.weight != rows.aid_weight).any()


def test_per_gt_rows_carry_boxes(workdir):
    cfg = smoke_cfg(workdir, "aid_retinanet", ["weighting.params.granularity=per_gt",
                                               "weighting.params.alpha=1.0", "name=per_gt"])
    rows = open_run(train(cfg)).instances("train")
    gts = rows[rows["gt"] >= 0]
    assert len(gts) and gts.label.between(1, 3).all() and (gts.x1 > gts.x0).all()
    anchored = gts[gts.num_anchors > 0]
    np.testing.assert_allclose(anchored.weight, np.exp(-anchored.teacher_loss), rtol=1e-5)
    assert (gts[gts.num_anchors == 0].weight == 1.0).all()


def test_per_level_batch_decoupled_shares_a_weight_per_level(workdir):
    cfg = smoke_cfg(workdir, "aid_retinanet", ["weighting.params.granularity=per_level_batch",
                                               "weighting.params.decoupled=true", "name=plb"])
    rows = open_run(train(cfg)).instances("train")
    assert (rows.groupby(["step", "level"]).weight.nunique() == 1).all()
    assert rows.weight_cls.notna().all() and rows.weight_box.notna().all()


def test_stopped_run_resumes_to_the_uninterrupted_weights(workdir, monkeypatch):
    cfg = smoke_cfg(workdir, "aid_retinanet", ["epochs=2", "name=resume"])
    reference = train(cfg, run_id="reference")
    original = Trainer._train_epoch

    def stop_in_second_epoch(self, epoch):
        if epoch == 1:
            raise StopRequested("stopped by request (test)")
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", stop_in_second_epoch)
    with pytest.raises(StopRequested):
        train(cfg, run_id="victim")
    victim = Path(cfg.runs_dir) / "victim"
    assert open_run(victim).status() == "stopped"
    monkeypatch.undo()
    train(None, resume=victim)
    run = open_run(victim)
    assert run.status() == "finished"
    assert run.instances("train").groupby("epoch").size().tolist() == [N_TRAIN * 5] * 2
    ours = load_file(str(victim / "checkpoints" / "student.safetensors"))
    theirs = load_file(str(reference / "checkpoints" / "student.safetensors"))
    assert all(np.array_equal(ours[k].numpy(), theirs[k].numpy()) for k in theirs)


@pytest.mark.parametrize("override, message", [
    ("weighting.strategy=teacher_confidence", "does not weight detection runs"),
    ("weighting.params.granularity=per_box", "granularity: must be one of"),
    ("distill.params.preset=nope", "distill.params.preset: unknown preset"),
    ("method=standard", "unknown detection method 'standard'"),
])
def test_detection_config_mistakes_are_one_line(workdir, override, message):
    with pytest.raises(ConfigError, match=message):
        train(smoke_cfg(workdir, "aid_retinanet", [override, "name=mistake"]))
    assert not list((workdir / "runs").glob("*mistake*"))


def test_classification_aid_refuses_detection_granularity():
    with pytest.raises(ConfigError, match="only per_image applies"):
        build_weighting("aid", {"granularity": "per_gt"})
    build_weighting("aid", {"granularity": "per_image"})


@pytest.mark.slow
def test_malformed_coco_file_fails_before_a_run_exists(tmp_path):
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(images / "a.png")
    (tmp_path / "data" / "ann.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
        "categories": [{"id": 1, "name": "car"}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [50, 50, 40, 40]}]}))
    raw = {"name": "bad_coco", "method": "scratch", "device": "cpu", "epochs": 1,
           "data": {"name": "coco", "root": str(tmp_path / "data"),
                    "params": {"annotations": "ann.json", "images": "images"}},
           "student": {"name": "retinanet", "params": {"width": 4, "fpn_channels": 16}},
           "runs_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache")}
    result = kdw("train", write_config(tmp_path / "bad.yaml", raw))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "ann.json" in lines[0] and "annotation id 7" in lines[0] and "outside" in lines[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("kind", ["retinanet", "fcos"])
def test_student_pass_reproduces_torchvision_loss(kind, tmp_path):
    """The single-stage student's per-image losses (one pass, with gradient) reduce to exactly
    torchvision's train-mode loss: RetinaNet averages images, FCOS divides by all foreground."""
    data = build_scenes(validate({"student": {"name": kind}, "data": {"name": "scenes", "params": {
        "n_train": 4, "n_val": 0, "n_test": 0, "image_size": 64}}}).data, 0,
        cache_dir=tmp_path)
    images, targets, _ = detection_collate([data.train[i] for i in range(4)])
    torch.manual_seed(0)
    model = freeze_batchnorm(build_detector(kind, 64, 4, width=4, fpn_channels=32).train())
    reference = sum(model(images, targets).values())
    ours = student_pass(model, images, targets)
    assert ours.cls.shape == (4,) and ours.loss.requires_grad
    torch.testing.assert_close(ours.loss, reference, rtol=1e-5, atol=1e-6)


def test_coco_dataset_from_one_file_or_one_file_per_split(tmp_path):
    for split, seed in (("a", 1), ("b", 2)):
        scenes = generate_scenes(6, seed=seed, image_size=64, first_image_id=100 * seed)
        write_scenes(scenes, tmp_path / split)
    one = validate({"student": {"name": "retinanet"}, "data": {
        "name": "coco", "root": str(tmp_path), "val_fraction": 0.2, "test_fraction": 0.2,
        "params": {"annotations": "a/annotations.json", "images": "a/images"}}}).data
    bundle = build_coco(one, 0)
    assert [len(s) for s in bundle.splits().values()] == [4, 1, 1] and bundle.num_classes == 4
    per_split = one.model_copy(update={"params": {
        "train": {"annotations": "a/annotations.json", "images": "a/images"},
        "val": {"annotations": "b/annotations.json", "images": "b/images"}}})
    bundle = build_coco(per_split, 0)
    assert [len(s) for s in bundle.splits().values()] == [6, 6, 0]
    assert bundle.input_shape == (3, 64, 64) and bundle.class_names[0] == "background"


def test_scenes_are_written_as_coco_and_read_back(tmp_path):
    data = validate({"student": {"name": "retinanet"}, "data": {"name": "scenes", "params": {
        "n_train": 4, "n_val": 2, "n_test": 2, "image_size": 64, "wrong_class_rate": 0.5}}}).data
    bundle = build_scenes(data, 5, cache_dir=tmp_path)
    root = scenes_dir(data, 5, tmp_path)
    assert bundle.num_classes == 4 and bundle.input_shape == (3, 64, 64)
    ids = {split: set(ds.ids) for split, ds in bundle.splits().items()}
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    info = {s: json.loads((root / s / "annotations.json").read_text())["info"] for s in ids}
    assert info["train"]["wrong_class_rate"] == 0.5 and info["val"]["wrong_class_rate"] == 0.0
    assert len({info[s]["seed"] for s in ids}) == 3  # each split from its own generator seed
    again = build_scenes(data, 5, cache_dir=tmp_path)  # read from the cache: identical
    assert np.array_equal(again.images(sorted(ids["val"])), bundle.images(sorted(ids["val"])))
    other = build_scenes(data, 6, cache_dir=tmp_path)
    assert not np.array_equal(other.train.images(other.train.ids), bundle.train.images(bundle.train.ids))
