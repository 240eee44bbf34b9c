"""The dense task on the Task interface, driven step by step the way the trainer drives a task:
batches with label and depth maps, per-image rows from the dense ``standard`` method, and an
evaluation whose metrics are recomputed here from the saved probe maps with scikit-learn."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from sklearn.metrics import jaccard_score

from kd_engine.config import validate
from kd_engine.errors import ConfigError
from kd_engine.models import build_model
from kd_engine.tasks import TASKS, task_for
from kd_engine.tasks.dense import DenseTask
from kd_engine.trainers import runtime

N_TRAIN, N_TEST = 24, 12


def config(**changes):
    raw = {"name": "dense", "device": "cpu", "threads": 1, "epochs": 1, "seed": 3,
           "data": {"name": "digit_scenes", "batch_size": 10, "eval_batch_size": 5, "image_size": 16,
                    "params": {"n_train": N_TRAIN, "n_val": 4, "n_test": N_TEST, "scale": 1}},
           "teacher": {"name": "fcn", "params": {"width": 4, "depth_head": True}},
           "student": {"name": "fcn", "params": {"width": 2, "depth_head": True}},
           "distill": {"terms": [{"loss": "pixel_kd", "params": {"temperature": 2.0}},
                                 {"loss": "channel_kd", "weight": 0.5}]},
           "weighting": {"strategy": "aid", "params": {"alpha": 0.5}}}
    raw.update(changes)
    return validate(raw)


def setup(cfg):
    task_cls = task_for(cfg.data.name)
    data = task_cls.build_data(cfg)
    task = task_cls(cfg, data, torch.device("cpu"), runtime.SINGLE, contextlib.nullcontext)
    torch.manual_seed(0)
    student = build_model(cfg.student, data.input_shape, data.num_classes)
    teacher = build_model(cfg.teacher, data.input_shape, data.num_classes) if cfg.teacher else None
    distiller = task_cls.methods.get(cfg.method)(cfg, student, teacher, data.input_shape)
    return task, data, distiller


def test_dense_task_is_picked_from_the_dataset_and_rows_are_per_image():
    cfg = config()
    assert task_for("digit_scenes") is DenseTask and TASKS.get("dense") is DenseTask
    task, data, distiller = setup(cfg)
    batches = list(task.batches(0))
    assert sorted(torch.cat([b.ids for b in batches]).tolist()) == data.train.ids.tolist()
    b = batches[0]
    positions = data.train.positions(b.ids.tolist())
    assert torch.equal(b.inputs[1], data.train.y[positions])
    assert torch.equal(b.kwargs["maps"]["depth"], data.train.maps["depth"][positions])
    out = distiller(*b.inputs, **b.kwargs)
    assert out.logits.shape == (len(b.ids), 11, 16, 16)
    rows = task.train_rows(out, b, step=4, epoch=0)
    assert {len(v) for v in rows.values()} == {len(b.ids)}
    for column in ("student_loss", "teacher_loss", "weight", "distill_loss", "term_pixel_kd", "term_channel_kd",
                   "student_depth_mse", "student_pixel_acc", "teacher_pixel_acc", "disagreement"):
        assert column in rows, column
    assert torch.allclose(rows["weight"], torch.exp(-0.5 * rows["teacher_loss"]))  # AID on the per-image loss
    assert torch.allclose(rows["distill_loss"], rows["term_pixel_kd"] + 0.5 * rows["term_channel_kd"])
    s_pred, t_pred = out.logits.argmax(1), out.teacher_logits.argmax(1)
    assert rows["disagreement"].numpy() == pytest.approx((s_pred != t_pred).float().mean((1, 2)).numpy())
    assert (rows["step"] == 4).all() and rows["instance_id"].tolist() == b.ids.tolist()
    assert task.run_meta(distiller) == {"task": "dense", "dense_outputs": ["depth"]}


def test_dense_evaluation_matches_metrics_recomputed_from_its_maps():
    cfg = config()
    task, data, distiller = setup(cfg)
    ev = task.evaluate("test", distiller.student, distiller.teacher, final=True)
    arts = {a.name.split("/")[-1]: a for a in ev.artifacts}
    assert set(arts) == {"true_mask", "student_mask", "teacher_mask", "student_depth", "teacher_depth",
                         "true_depth", "disparity", "depth_disparity"}
    assert arts["depth_disparity"].array == pytest.approx(np.abs(arts["teacher_depth"].array - arts["student_depth"].array))
    assert all(a.kind == "dense_map" and a.meta["instance_ids"] == data.test.ids.tolist() for a in arts.values())
    true = arts["true_mask"].array
    assert np.array_equal(true, data.test.y.numpy())
    for role in ("student", "teacher"):
        pred = arts[f"{role}_mask"].array
        labels = sorted(set(np.unique(true)) | set(np.unique(pred)))
        iou = jaccard_score(true.ravel(), pred.ravel(), labels=labels, average=None)
        assert ev.metrics[f"test/{role}_mIoU"] == pytest.approx(iou.mean())
        assert ev.metrics[f"test/{role}_pixel_acc"] == pytest.approx((true == pred).mean())
        rmse = np.sqrt(((arts[f"{role}_depth"].array - arts["true_depth"].array) ** 2).mean())
        assert ev.metrics[f"test/{role}_rmse"] == pytest.approx(rmse, rel=1e-5)
        assert ev.columns[f"{role}_pixel_acc"] == pytest.approx((true == pred).mean(axis=(1, 2)))
    assert ev.columns["disparity"] == pytest.approx(arts["disparity"].array.mean(axis=(1, 2)), rel=1e-5)
    assert ev.columns["instance_id"].tolist() == data.test.ids.tolist()
    assert not task.evaluate("val", distiller.student, distiller.teacher).artifacts  # maps only at the end
    assert distiller.student.training  # evaluation restores the mode


def test_dense_scratch_without_teacher_and_bad_terms():
    cfg = config(method="scratch", teacher=None, distill={}, weighting={})
    task, data, distiller = setup(cfg)
    b = next(iter(task.batches(0)))
    rows = task.train_rows(distiller(*b.inputs, **b.kwargs), b, 0, 0)
    assert "teacher_pixel_acc" not in rows and "student_depth_mse" in rows
    ev = task.evaluate("test", distiller.student, None, final=True)
    assert "disparity" not in ev.columns and "test/student_mIoU" in ev.metrics
    with pytest.raises(ConfigError, match=r"distill.terms.0.loss: kd takes \(B, C\) logits"):
        setup(config(distill={"terms": [{"loss": "kd"}]}))
    with pytest.raises(ConfigError, match="does not weight dense runs"):
        setup(config(weighting={"strategy": "teacher_confidence"}))
