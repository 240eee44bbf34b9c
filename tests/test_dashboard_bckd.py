"""The detection Instances page on a BCKD run (rows per image × FPN level with per-class
discrepancy weights ``disc_c<label>``), rendered with AppTest against a fixture store written by
`RunWriter` in the shape the bckd method records: the heatmaps show the level × class means,
the image selector ranks images by their mean weight, the curves follow the epochs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest_dashboard import chart_specs, open_instances
from kd_engine.store import RunWriter

CATS = ["car", "pedestrian", "cyclist"]
IDS, LEVELS, EPOCHS = [21, 22, 23], 2, 2
RUN = "20260301-000100-bckd-aaaa"


def disc(epoch: int) -> np.ndarray:
    """(image, level, class) weights, distinct everywhere; image 22 has the largest mean."""
    base = np.arange(len(IDS) * LEVELS * 3, dtype=float).reshape(len(IDS), LEVELS, 3) / 100
    base[1] += 0.5
    return base / (epoch + 1)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("runs_bckd")
    meta = {"task": "detection", "method": "bckd", "dataset": "scenes",
            "class_names": ["background", *CATS], "category_names": CATS, "input_shape": [3, 32, 32],
            "teacher": "fcos(t)", "student": "fcos(s)", "epochs": EPOCHS}
    writer = RunWriter.create(base, "bckd", meta, yaml.safe_dump({"name": "bckd"}), run_id=RUN, tensorboard=False)
    writer.save_images(np.array(IDS), np.full((3, 32, 32, 3), 0.3, dtype=np.float32))
    writer.save_artifact("gt_boxes", np.array([[21, 1, 2, 2, 12, 12], [22, 2, 5, 5, 20, 30]], dtype=np.float32),
                         kind="boxes", dtype="float32")
    for epoch in range(EPOCHS):
        writer.log_scalars(10 * epoch, epoch, {"train/loss": 1.0, "val/student_mAP": 0.1})
        writer.flush()
        w = disc(epoch)
        n = len(IDS) * LEVELS
        writer.log_instances({"split": np.full(n, "train"), "epoch": np.full(n, epoch), "step": np.full(n, 10 * epoch),
                              "instance_id": np.repeat(IDS, LEVELS), "level": np.tile(np.arange(LEVELS), len(IDS)),
                              "label": np.full(n, -1), "box_weight": w.max(-1).reshape(-1),
                              "kd_cls": np.full(n, 0.1), "kd_box": np.full(n, 0.2),
                              **{f"disc_c{c + 1}": w[..., c].reshape(-1) for c in range(3)}})
    writer.set_meta(final_metrics={"test/student_mAP": 0.2})
    writer.set_status("finished")
    writer.close()
    return base


def titled(at, text: str) -> dict:
    found = [f for f in chart_specs(at) if text in (f["layout"].get("title") or {}).get("text", "")]
    assert found, text
    return found[0]


def test_bckd_instances_show_per_class_weights(runs_dir, monkeypatch):
    at = open_instances(runs_dir, RUN, monkeypatch)
    w = disc(EPOCHS - 1)
    heat = titled(at, "mean weight per level and class, all images")["data"][0]
    assert heat["x"] == CATS and heat["y"] == ["level 0", "level 1"]
    assert np.allclose(heat["z"], w.mean(0))
    assert at.selectbox(key="bckd_image").value == 22  # the largest mean weight comes first
    one = titled(at, "image #22")["data"][0]
    assert np.allclose(one["z"], w[1])
    at.selectbox(key="bckd_image").set_value(21).run()
    assert np.allclose(titled(at, "image #21")["data"][0]["z"], w[0])
    curves = titled(at, "mean weight per class across epochs")["data"]
    assert [t["name"] for t in curves] == CATS
    assert np.allclose(curves[0]["y"], [disc(e)[..., 0].mean() for e in range(EPOCHS)])
    gallery = titled(at, "Largest mean discrepancy weight")
    assert [int(t["name"][1:]) for t in gallery["data"] if t["type"] == "image"][0] == 22
    assert [m.label for m in at.metric] == [f"mean weight, {c}" for c in CATS]
