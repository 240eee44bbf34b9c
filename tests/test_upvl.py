"""UP-VL end to end at a tiny size: the ground3d dataset, the auto-label tables, the zero-shot
evaluator on hand-made predictions, and the shipped config through `kd_engine.run.train` (the
per-scene decisions and the zero-shot metrics are recorded; bad settings name their field)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kd_engine.config import load_raw, validate
from kd_engine.data import build_data
from kd_engine.data.scenes3d import GROUND
from kd_engine.errors import ConfigError
from kd_engine.parts.upvl_eval import OBJECT_COLUMNS, evaluate_scenes
from kd_engine.parts.upvl_scenes import label_scenes

TINY = {"scenes": 6, "test_scenes": 2, "points": 272, "points_per_object": 48, "image_size": 16, "render_points": 2000}


def _data():
    return build_data(SimpleNamespace(name="ground3d", params=dict(TINY), split_seed=None), 0)


def test_ground3d_scenes_keep_every_object_point_and_a_camera_view():
    data = _data()
    train = data.train
    assert train.x.shape == (4, 272, 9) and train.previous.shape == (4, 272, 3) and data.num_classes == GROUND + 1
    for i in range(len(train)):
        objects = train.instance[i][train.instance[i] >= 0]
        assert (np.bincount(objects) == TINY["points_per_object"]).all()  # every object point kept
        assert ((train.y[i].numpy() == GROUND) == (train.instance[i] < 0)).all()
        visible, pixel = train.visible[i, 0], train.pixel[i, 0]
        assert (pixel[visible] >= 0).all() and (pixel[visible] < TINY["image_size"]).all()
    np.testing.assert_allclose(train.x[..., :3].numpy() * 3.0, train.xyz, atol=1e-5)
    assert train.images.shape == (4, 1, 16, 16, 3)


def test_truth_labels_are_the_objects_and_hold_the_class_out():
    data = _data()
    p = {"labels": "truth", "held_out": 2}
    out = label_scenes(data.train, None, np.zeros((5, 16)), np.zeros((1, 16)), p)
    np.testing.assert_array_equal(out["objectness"], (data.train.instance >= 0).astype(np.float32))
    y = data.train.y.numpy()
    assert (out["target_class"][y == 2] == -1).all() and (out["target_class"][y == GROUND] == -1).all()
    kept = (y != 2) & (y != GROUND)
    np.testing.assert_array_equal(out["target_class"][kept], y[kept])
    moved = [len(np.unique(data.train.instance[i][data.train.moving[i]])) for i in range(len(data.train))]
    np.testing.assert_array_equal(out["moving_labels"], moved)


def test_evaluator_known_answers():
    """Two scenes built by hand: perfect objectness and features equal to the class embeddings
    score 1 everywhere; naming the held-out object wrong moves only its own accuracy."""
    rng = np.random.default_rng(0)
    blob = lambda c: np.asarray(c) + rng.uniform(-0.05, 0.05, (10, 3))
    xyz = np.stack([np.concatenate([blob([0, 0, .5]), blob([2, 0, .5]), np.c_[rng.uniform(-3, 3, (10, 2)), np.zeros(10)]])
                    for _ in range(2)])
    instance = np.tile(np.repeat([0, 1, -1], 10), (2, 1))
    label = np.stack([np.repeat([0, 4, GROUND], 10), np.repeat([1, 3, GROUND], 10)])
    moving = np.stack([np.repeat([True, False, False], 10), np.repeat([False, False, False], 10)])
    dataset = SimpleNamespace(xyz=xyz, instance=instance, moving=moving, y=torch.as_tensor(label),
                              ids=torch.tensor([10, 11]))
    embeddings = np.eye(5, 16)
    features = embeddings[np.minimum(label, 4)]
    objectness = (instance >= 0).astype(float)
    metrics, columns, table, predicted = evaluate_scenes(dataset, objectness, features, embeddings, held_out=4,
                                                         ground=GROUND, eps=0.3, min_samples=3)
    assert metrics["recall_static"] == metrics["recall_moving"] == 1.0
    assert metrics["naming_acc_seen"] == metrics["naming_acc_held_out"] == 1.0
    assert metrics["miou"] == pytest.approx(1.0) and metrics["point_acc"] == 1.0
    np.testing.assert_array_equal(predicted, label)
    assert table.shape == (4, len(OBJECT_COLUMNS)) and columns["instance_id"].tolist() == [10, 11]
    # scene 10's cone (held out) named "cube": held-out accuracy 0, seen accuracy unchanged
    wrong = features.copy()
    wrong[0, 10:20] = embeddings[0]
    metrics, _, table, predicted = evaluate_scenes(dataset, objectness, wrong, embeddings, held_out=4,
                                                   ground=GROUND, eps=0.3, min_samples=3)
    assert metrics["naming_acc_held_out"] == 0.0 and metrics["naming_acc_seen"] == 1.0
    # IoU: cube 10/20, cone 0 (in the truth, never predicted), tall box, sphere and ground 1;
    # the cylinder occurs nowhere and is left out of the mean
    assert metrics["miou"] == pytest.approx((0.5 + 1 + 1 + 0 + 1) / 5)
    # no objectness: nothing found, every point called ground
    metrics, _, _, predicted = evaluate_scenes(dataset, np.zeros_like(objectness), features, embeddings, held_out=4,
                                               ground=GROUND, eps=0.3, min_samples=3)
    assert metrics["recall_static"] == metrics["recall_moving"] == 0.0 and (predicted == GROUND).all()


def _config(tmp_path, **params):
    raw = load_raw("configs/upvl_scenes.yaml")
    raw.update(epochs=2, eval_every=2, runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"))
    raw["data"]["params"] = dict(TINY)
    raw["data"]["batch_size"] = 2
    raw["distill"]["params"].update(teacher_images=20, teacher_epochs=1, **params)
    raw["record"] = {"attention_maps": 2, "tensorboard": False}
    return validate(raw, "test")


def test_shipped_config_trains_and_records(tmp_path):
    from kd_engine.run import train
    from kd_engine.store import open_run

    run = open_run(train(_config(tmp_path), distributed=False))
    assert run.meta()["task"] == "points" and run.meta()["status"] == "finished"
    rows = run.instances(split="train")
    assert len(rows) == 2 * 4
    assert rows["visible_fraction"].between(0.2, 1).all() and rows["distill_loss"].between(0, 2).all()
    assert (rows["moving_labels"] >= 0).all() and (rows["static_labels"] >= 0).all()
    final = run.final_metrics()
    for key in ("recall_static", "recall_moving", "naming_acc_seen", "mIoU", "oAcc"):
        assert 0.0 <= final[f"test/student_{key}"] <= 1.0, key
    assert math.isnan(final.get("test/student_naming_acc_held_out", math.nan)) or \
        0.0 <= final["test/student_naming_acc_held_out"] <= 1.0
    # the points are scored as named (no matching): the stored prediction of the probe scene gives oAcc
    true, pred = run.load_artifact("points/test/true"), run.load_artifact("points/test/student_pred")
    assert true.shape == pred.shape == (2, TINY["points"]) and set(np.unique(pred)) <= set(range(GROUND + 1))
    objects = run.load_artifact("points/test/upvl_objects")
    assert objects.shape[1] == len(OBJECT_COLUMNS) and set(objects[:, 0]) <= {4, 5}
    assert final["test/student_recall_moving" if objects[:, 3].any() else "test/student_recall_static"] == \
        pytest.approx(objects[objects[:, 3] == objects[:, 3].max(), 4].mean())
    assert run.load_artifact("points/train/upvl_autolabels").shape == (4, TINY["points"])
    if len(true) == 2:  # both test scenes probed: the named oAcc is their plain accuracy
        assert final["test/student_oAcc"] == pytest.approx((true == pred).mean())
    # the motion-only baseline labels no static cluster; the cache serves the second run
    motion = open_run(train(_config(tmp_path, labels="motion", distill_weight=0.0), distributed=False))
    assert (motion.instances(split="train")["static_labels"] == 0).all()
    assert len(list((tmp_path / "cache" / "vl_teacher").glob("*.safetensors"))) == 1


def test_errors_name_the_field(tmp_path):
    from kd_engine.run import train

    with pytest.raises(ConfigError, match="distill.params.labels: expected one of motion, motion_vl, truth"):
        train(_config(tmp_path, labels="boxes"), distributed=False)
    with pytest.raises(ConfigError, match="distill.params.held_out"):
        train(_config(tmp_path, held_out=7), distributed=False)
    raw = load_raw("configs/upvl_scenes.yaml")
    raw["data"] = {"name": "rooms3d", "params": {"scenes": 3, "test_scenes": 1, "points": 64, "views": 1,
                                                 "image_size": 16, "render_points": 500, "supervoxels": 8}}
    with pytest.raises(ConfigError, match="data.name: method upvl needs two-frame scenes"):
        train(validate({**raw, "runs_dir": str(tmp_path / "r"), "cache_dir": str(tmp_path / "c")}, "t"),
              distributed=False)
