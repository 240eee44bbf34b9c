"""Cross-fitted detection teachers: K teachers on folds of the training images, each image scored
by the teacher that never saw it (``teacher.cross_fit``, ``data.holdout_fold``)."""
from pathlib import Path

import numpy as np
import pytest
import torch

from kd_engine.cache import fold_config, teacher_cache_path
from kd_engine.config import apply_override, load_raw, validate
from kd_engine.errors import ConfigError
from kd_engine.losses.detection_teacher import teacher_losses
from kd_engine.models.cross_fit import CrossFitTeacher
from kd_engine.models.detection import build_detector
from kd_engine.run import train
from kd_engine.store import open_run
from kd_engine.tasks.detection import DetectionTask

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["data.params.n_train=8", "data.params.n_val=4", "data.params.n_test=4",
         "data.params.image_size=64", "data.batch_size=4", "data.eval_batch_size=8", "epochs=1",
         "threads=1", "teacher.train.epochs=1", "teacher.params.width=8", "teacher.params.depth=1",
         "teacher.params.fpn_channels=64", "student.params.width=4", "student.params.fpn_channels=64",
         "schedule.warmup_iters=2", "teacher.train.schedule.warmup_iters=2", "record.tensorboard=false"]


def _cfg(tmp_path, *extra):
    raw = load_raw(REPO / "configs" / "aid_fcos.yaml")
    for a in [*SMOKE, f"runs_dir={tmp_path / 'runs'}", f"cache_dir={tmp_path / 'cache'}", *extra]:
        apply_override(raw, a)
    return validate(raw)


def _batch(data, n=6):
    items = [data.train[i] for i in range(n)]
    images = [im for im, _, _ in items]
    targets = [{**t, "image_id": int(i)} for _, t, i in items]
    return images, targets


def test_each_image_is_scored_by_the_teacher_of_its_fold(tmp_path):
    data = DetectionTask.build_data(_cfg(tmp_path))
    images, targets = _batch(data)
    torch.manual_seed(0)
    folds = [build_detector("fcos", 64, 4, width=4, depth=1, fpn_channels=64).eval() for _ in range(3)]
    routed = teacher_losses(CrossFitTeacher(folds), images, targets)
    for b, t in enumerate(targets):
        own = teacher_losses(folds[t["image_id"] % 3], [images[b]], [t])
        torch.testing.assert_close(routed.cls[b:b + 1], own.cls, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(routed.box_level[b:b + 1], own.box_level, rtol=1e-4, atol=1e-5)
        for lv in own.features:
            torch.testing.assert_close(routed.features[lv][b:b + 1], own.features[lv], rtol=1e-4, atol=1e-5)
    # another fold's teacher gives another loss: the routing is not a no-op
    other = teacher_losses(folds[(targets[0]["image_id"] + 1) % 3], [images[0]], [targets[0]])
    assert not torch.allclose(routed.cls[:1], other.cls)


def test_holdout_fold_drops_exactly_that_fold(tmp_path):
    full = DetectionTask.build_data(_cfg(tmp_path)).train.ids
    kept = DetectionTask.build_data(_cfg(tmp_path, "data.holdout_fold=[1, 2]")).train.ids
    assert sorted(kept) == sorted(i for i in full if i % 2 == 0) and 0 < len(kept) < len(full)


@pytest.mark.slow
def test_cross_fitted_run_trains_one_teacher_per_fold_on_the_other_folds(tmp_path):
    cfg = _cfg(tmp_path, "teacher.cross_fit=2")
    run = open_run(train(cfg, distributed=False))
    assert run.status() == "finished"
    paths = [teacher_cache_path(fold_config(cfg, k)) for k in range(2)]
    assert all(p.is_file() for p in paths) and paths[0] != paths[1]
    assert all(str(p) in run.meta()["teacher_source"] for p in paths)
    train_ids = set(DetectionTask.build_data(cfg).train.ids)
    teacher_runs = [d for d in (tmp_path / "runs").iterdir() if d.name.split("-", 2)[-1].startswith("teacher")]
    seen = {}
    for d in teacher_runs:
        rows = open_run(d).instances(split="train", columns=["instance_id"])
        seen[d.name] = set(rows["instance_id"].astype(int))
    assert len(seen) == 2
    left_out = sorted(train_ids - ids for ids in seen.values())
    assert sorted(tuple(sorted({i % 2 for i in miss})) for miss in left_out) == [(0,), (1,)]
    rows = run.instances(split="train", columns=["instance_id", "teacher_loss"])
    assert np.isfinite(rows["teacher_loss"]).all()


@pytest.mark.parametrize("extra, field", [
    (["teacher.cross_fit=1"], "teacher.cross_fit"),
    (["teacher.cross_fit=2", "teacher.checkpoint=x.safetensors"], "teacher"),
    (["data.holdout_fold=[2, 2]"], "data.holdout_fold"),
])
def test_bad_cross_fit_settings_name_the_field(tmp_path, extra, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        _cfg(tmp_path, *extra)


def test_cross_fit_is_refused_where_the_task_cannot_route_by_image(tmp_path):
    raw = load_raw(REPO / "configs" / "demo_kd.yaml")
    raw["teacher"].pop("checkpoint", None)
    raw["teacher"]["cross_fit"] = 2
    raw.update(runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"teacher\.cross_fit: the classification task.*detection"):
        train(validate(raw), distributed=False)
