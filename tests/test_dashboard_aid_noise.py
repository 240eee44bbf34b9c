"""The detection Instances page's label-noise view: AUROC of 1 − w per epoch and the galleries of
corrupted / clean images AID weighted lowest (AppTest on a fixture store)."""
from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest_dashboard import open_page
from test_dashboard_detection import BOXES, CLASSES, IMAGE_IDS, scenes, texts, titled

from kd_engine.store import RunWriter

RUN = "20260301-000100-det_noise-dddd"
NOISE = {11: 0, 12: 2, 13: 0}  # image 12 has two corrupted annotations
# image mean weights per epoch (two levels each): epoch 0 the corrupted image is lowest
# (AUROC 1.0); epoch 1 it sits between the clean ones (0.95 > 0.7 > 0.5 -> AUROC 0.5).
W = {0: {11: (0.9, 1.0), 12: (0.3, 0.5), 13: (0.8, 0.9)},
     1: {11: (0.9, 1.0), 12: (0.6, 0.8), 13: (0.4, 0.6)}}


@pytest.fixture(scope="module")
def noise_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs_noise")
    meta = {"task": "detection", "method": "zhang_ma", "dataset": "scenes", "class_names": CLASSES,
            "input_shape": [3, 32, 32], "epochs": 2}
    writer = RunWriter.create(base, "det", meta, yaml.safe_dump({"name": "det"}), run_id=RUN, tensorboard=False)
    writer.save_images(np.array(IMAGE_IDS), scenes())
    writer.save_artifact("gt_boxes", BOXES, kind="boxes", dtype="float32")
    for epoch in (0, 1):
        writer.log_scalars(epoch, epoch, {"train/loss": 1.0})
        ids = np.repeat(IMAGE_IDS, 2)
        w = np.array([W[epoch][i][lv] for i in IMAGE_IDS for lv in (0, 1)])
        writer.log_instances({"split": np.full(6, "train"), "epoch": np.full(6, epoch), "step": np.full(6, epoch),
                              "instance_id": ids, "level": np.tile([0, 1], 3), "weight": w, "aid_weight": w,
                              "teacher_loss": -np.log(w), "label_noise": np.array([NOISE[i] for i in ids])})
    writer.set_meta(final_metrics={"test/student_mAP": 0.2})
    writer.set_status("finished")
    writer.close()
    return base


def test_noise_view_auroc_per_epoch_and_galleries(noise_dir, monkeypatch):
    at = open_page(noise_dir, RUN, "instances", monkeypatch)
    curve = titled(at, "AUROC of 1 − w against the injected label noise")
    per_image = curve["data"][0]
    assert list(per_image["x"]) == [0, 1]
    assert list(per_image["y"]) == pytest.approx([1.0, 0.5])
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["AUROC (images)"] == "0.500" and metrics["corrupted images"] == "1"  # noqa
    caught = titled(at, "Corrupted images with the lowest weight")
    assert [t["name"] for t in caught["data"] if t["type"] == "image"] == ["#12"]
    alarms = titled(at, "Clean images with the lowest weight")
    assert [t["name"] for t in alarms["data"] if t["type"] == "image"] == ["#13", "#11"]  # lowest first
    at.select_slider(key="inst_epoch_train").set_value(0).run()
    assert {m.label: m.value for m in at.metric}["AUROC (images)"] == "1.000"


def test_no_noise_view_without_noise_records(noise_dir, monkeypatch, tmp_path):
    from test_dashboard_detection import LEVEL_RUN, build_detection_run
    build_detection_run(tmp_path, LEVEL_RUN, per_gt=False)
    at = open_page(tmp_path, LEVEL_RUN, "instances", monkeypatch)
    assert "Does AID find" not in texts(at.subheader)
