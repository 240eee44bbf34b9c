"""The Instances and Curves pages on object-detection runs (meta `task: detection`), rendered with
AppTest against fixture stores written by `RunWriter` in the shape the detection trainer records:
rows per (image, FPN level), per-GT rows, a `gt_boxes` artifact and an image bank. Also the
`detection_gallery` figure function itself."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.colors as pcolors
import pytest
import yaml
from streamlit.testing.v1 import AppTest

import workbench.figures as figures
from conftest_dashboard import REPO, build_run, open_page
from kd_engine.store import RunWriter
from workbench.figures import detection as D

CLASSES = ["car", "pedestrian", "cyclist"]
IMAGE_IDS = [11, 12, 13]  # COCO image ids, not positions
BOXES = np.array([[11, 1, 2, 3, 14, 12], [11, 2, 18, 4, 26, 30], [12, 3, 5, 5, 20, 20],
                  [13, 1, 0, 0, 10, 10], [13, 1, 12, 12, 30, 31], [13, 2, 20, 2, 31, 9]], dtype=np.float32)
LEVELS, EPOCHS = 2, 2
LEVEL_RUN, GT_RUN, CLS_RUN = ("20260201-000100-det_level-aaaa", "20260201-000200-det_gt-bbbb",
                              "20260201-000050-cls-cccc")


def level_weights(epoch: int) -> np.ndarray:
    """Weight of (image k, level l), distinct everywhere; level 1 reverses level 0's image order."""
    return np.array([[0.9 - 0.2 * k, 0.3 + 0.25 * k] for k in range(3)]) - 0.05 * epoch


def gt_weights(epoch: int) -> np.ndarray:
    return np.linspace(0.2, 0.95, len(BOXES))[::-1] - 0.03 * epoch


def scenes() -> np.ndarray:
    """Grey backgrounds with each GT box painted lighter, so a screenshot shows whether the
    drawn outlines sit on the objects."""
    images = np.full((3, 32, 32, 3), 0.25, dtype=np.float32)
    for image_id, _, x0, y0, x1, y1 in BOXES:
        images[IMAGE_IDS.index(int(image_id)), int(y0):int(y1), int(x0):int(x1)] += 0.2
    return images


def build_detection_run(runs_dir: Path, run_id: str, per_gt: bool) -> Path:
    """per_gt=False: AID per image x level under the shuffled control (used weight != raw AID
    weight). per_gt=True: per-image rows (level -1, gt -1) plus one row per GT box, no student loss."""
    meta = {"task": "detection", "method": "aid", "dataset": "scenes", "class_names": CLASSES,
            "input_shape": [3, 32, 32], "teacher": "retinanet(r18)", "student": "retinanet(tiny)", "epochs": EPOCHS}
    writer = RunWriter.create(runs_dir, "det", meta, yaml.safe_dump({"name": "det"}), run_id=run_id,
                              tensorboard=False)
    rng = np.random.default_rng(len(run_id))
    writer.save_images(np.array(IMAGE_IDS), scenes())
    writer.save_artifact("gt_boxes", BOXES, kind="boxes", dtype="float32")
    for epoch in range(EPOCHS):
        writer.log_scalars(10 * epoch, epoch, {"train/loss": 1.0 / (epoch + 1), "val/student_mAP": 0.1 + 0.1 * epoch,
                                                "val/student_AP50": 0.3 + 0.1 * epoch, "val/teacher_mAP": 0.4})
        writer.flush()
        if per_gt:
            n, levels, weight = 3, np.full(3, -1), level_weights(epoch).mean(1)
        else:
            n, levels, weight = 3 * LEVELS, np.tile(np.arange(LEVELS), 3), level_weights(epoch).reshape(-1)
        image_ids = np.repeat(IMAGE_IDS, n // 3)
        cols = {"split": np.full(n, "train"), "epoch": np.full(n, epoch), "step": np.full(n, 10 * epoch + 9),
                "instance_id": image_ids, "level": levels, "weight": weight,
                "aid_weight": weight if per_gt else weight[::-1], "teacher_cls": rng.gamma(2, 0.2, n),
                "teacher_box": rng.gamma(2, 0.1, n),
                "student_loss": np.full(n, np.nan) if per_gt else rng.gamma(2, 0.3, n),
                **{t: rng.gamma(2, 0.1, n) for t in ("term_am", "term_at_ch", "term_at_sp", "term_nl", "distill_loss")}}
        cols["teacher_loss"] = cols["teacher_cls"] + cols["teacher_box"]
        if per_gt:
            g = len(BOXES)
            cols.update(gt=np.full(n, -1), label=np.full(n, -1), **{c: np.full(n, np.nan) for c in D.BOX_COLUMNS})
            gt_rows = {k: v[:1].repeat(g) for k, v in cols.items()}
            gt_rows.update(instance_id=BOXES[:, 0].astype(int), gt=D.boxes_frame(BOXES)["gt"].to_numpy(),
                           label=BOXES[:, 1].astype(int), weight=gt_weights(epoch), aid_weight=gt_weights(epoch),
                           teacher_cls=rng.gamma(2, 0.2, g), teacher_box=rng.gamma(2, 0.1, g),
                           **{c: BOXES[:, 2 + j] for j, c in enumerate(D.BOX_COLUMNS)})
            gt_rows["teacher_loss"] = gt_rows["teacher_cls"] + gt_rows["teacher_box"]
            cols = {k: np.concatenate([np.asarray(cols[k]), np.asarray(gt_rows[k])]) for k in cols}
        writer.log_instances(cols)
    writer.set_meta(final_metrics={"test/student_mAP": 0.2, "test/student_AP50": 0.45, "test/teacher_mAP": 0.4,
                                   **{f"test/student_AP/{c}": 0.1 * (k + 1) for k, c in enumerate(CLASSES)}})
    writer.set_status("finished")
    writer.close()
    return writer.run_dir


@pytest.fixture(scope="module")
def det_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("runs_detection")
    build_detection_run(base, LEVEL_RUN, per_gt=False)
    build_detection_run(base, GT_RUN, per_gt=True)
    build_run(base, CLS_RUN, checkpoints=False, epochs=1)
    return base




def titled(at: AppTest, text: str) -> dict:
    found = [f for f in (json.loads(el.proto.spec) for el in at.get("plotly_chart"))
             if text in (f["layout"].get("title") or {}).get("text", "")]
    assert found, text
    return found[0]


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def box_colours(fig: dict) -> list[tuple[int, str]]:
    """(image id, line colour) per shape, the image found from the subplot the shape is drawn on."""
    image_at = {t.get("xaxis", "x"): int(t["name"][1:]) for t in fig["data"] if t["type"] == "image"}
    return [(image_at[s["xref"]], s["line"]["color"]) for s in fig["layout"]["shapes"]]


def expected_colour(fig: dict, weight: float) -> str:
    axis = fig["layout"]["coloraxis"]
    t = (weight - axis["cmin"]) / (axis["cmax"] - axis["cmin"])
    return pcolors.sample_colorscale(axis["colorscale"], [min(max(t, 0.0), 1.0)])[0]


# -- AppTest ------------------------------------------------------------------------------------
def test_level_selector_filters_histogram_scatter_and_table(det_dir, monkeypatch):
    at = open_page(det_dir, LEVEL_RUN, 'instances', monkeypatch)
    w = level_weights(EPOCHS - 1)
    hist = titled(at, f"weights at epoch {EPOCHS - 1}")
    assert sorted(hist["data"][0]["x"]) == pytest.approx(sorted(w.reshape(-1)))
    scatter = titled(at, "weight vs teacher_loss")
    assert sorted(t["name"] for t in scatter["data"]) == ["level 0", "level 1"]
    assert sum(len(t["x"]) for t in scatter["data"]) == 6
    assert titled(at, "weight vs student_loss")
    assert len(at.dataframe[0].value) == 6
    at.radio(key="det_level").set_value(1).run()
    assert not at.exception
    assert sorted(titled(at, "weights at epoch")["data"][0]["x"]) == pytest.approx(sorted(w[:, 1]))
    assert [t["name"] for t in titled(at, "weight vs teacher_loss")["data"]] == ["level 1"]
    table = at.dataframe[0].value
    assert len(table) == 3 and set(table["level"]) == {1} and table["weight"].is_monotonic_decreasing
    at.select_slider(key="inst_epoch_train").set_value(0).run()
    assert sorted(titled(at, "weights at epoch 0")["data"][0]["x"]) == pytest.approx(sorted(level_weights(0)[:, 1]))


def test_gallery_boxes_coloured_by_mean_level_weight(det_dir, monkeypatch):
    at = open_page(det_dir, LEVEL_RUN, 'instances', monkeypatch)
    w = dict(zip(IMAGE_IDS, level_weights(EPOCHS - 1).mean(1)))
    high, low = titled(at, "Highest weighted images"), titled(at, "Lowest weighted images")
    for fig, order in ((high, sorted(w, key=w.get, reverse=True)), (low, sorted(w, key=w.get))):
        assert [int(t["name"][1:]) for t in fig["data"] if t["type"] == "image"] == order
        shapes = box_colours(fig)
        assert len(shapes) == len(BOXES)  # one per GT box of the shown images
        assert [image for image, _ in shapes] == [i for i in order for _ in range(int((BOXES[:, 0] == i).sum()))]
        assert all(colour == expected_colour(fig, w[image]) for image, colour in shapes)
        assert fig["layout"]["coloraxis"]["colorbar"]["title"]["text"] == "weight"
    top = max(w, key=w.get)
    assert dict(box_colours(high))[top] == expected_colour(high, high["layout"]["coloraxis"]["cmax"])
    at.radio(key="det_level").set_value(1).run()  # level 1 reverses the order of the images
    w1 = dict(zip(IMAGE_IDS, level_weights(EPOCHS - 1)[:, 1]))
    fig = titled(at, "Highest weighted images")
    assert [int(t["name"][1:]) for t in fig["data"] if t["type"] == "image"] == sorted(w1, key=w1.get, reverse=True)
    assert all(colour == expected_colour(fig, w1[image]) for image, colour in box_colours(fig))


def test_controls_plot_raw_vs_used_weight(det_dir, monkeypatch):
    at = open_page(det_dir, LEVEL_RUN, 'instances', monkeypatch)
    fig = titled(at, "used weight vs raw AID weight")
    points = sorted((x, y) for t in fig["data"] if t["name"] != "used = raw" for x, y in zip(t["x"], t["y"]))
    w = level_weights(EPOCHS - 1).reshape(-1)
    assert np.allclose(points, sorted(zip(w[::-1], w)))  # the fixture's control reverses the weights
    assert "control arm" in texts(at.caption)
    at = open_page(det_dir, GT_RUN, 'instances', monkeypatch)
    assert "are the raw AID weights" in texts(at.caption)


def test_per_gt_rows_colour_each_box_and_switch_the_views(det_dir, monkeypatch):
    at = open_page(det_dir, GT_RUN, 'instances', monkeypatch)
    assert "Weights are per image" in texts(at.caption)
    assert not [r for r in at.get("radio") if r.key == "det_level"]  # per-image rows: no levels
    assert len(titled(at, "weights at epoch 1")["data"][0]["x"]) == 3  # image rows by default
    assert "No student_loss recorded" in texts(at.info)
    fig = titled(at, "Highest weighted images")
    gw = gt_weights(EPOCHS - 1)
    frame = D.boxes_frame(BOXES)
    own = dict(zip(zip(frame["image_id"], frame["gt"]), gw))
    shapes = box_colours(fig)
    assert len(shapes) == len(BOXES)
    seen: dict[int, int] = {}
    for image, colour in shapes:  # boxes of an image come in GT order
        k = seen[image] = seen.get(image, -1) + 1
        assert colour == expected_colour(fig, own[(image, k)])
    assert len({c for _, c in shapes}) == len(BOXES)  # distinct weights, distinct colours
    at.radio(key="det_rows").set_value("GT boxes").run()
    assert not at.exception
    assert sorted(titled(at, "GT boxes")["data"][0]["x"]) == pytest.approx(sorted(gw))
    scatter = titled(at, "weight vs teacher_loss (GT boxes)")
    assert {t["name"] for t in scatter["data"]} == set(CLASSES)
    at.checkbox(key="det_table_gt").check().run()
    assert len(at.dataframe[0].value) == 3 + len(BOXES)


def test_curves_plot_map_scalars_and_classification_page_unchanged(det_dir, monkeypatch):
    at = open_page(det_dir, LEVEL_RUN, "curves", monkeypatch)
    at.slider(key="curves_smooth").set_value(0.0).run()  # the mAP keys are shown by default
    for key in ("val/student_mAP", "val/student_AP50", "val/teacher_mAP"):
        assert titled(at, key)["data"][-1]["y"] == pytest.approx(
            {"val/student_mAP": [0.1, 0.2], "val/student_AP50": [0.3, 0.4], "val/teacher_mAP": [0.4, 0.4]}[key])
    at = open_page(det_dir, CLS_RUN, 'instances', monkeypatch)
    assert titled(at, "weights at epoch 0") and titled(at, "Highest weighted")
    assert not [r for r in at.get("radio") if r.key in ("det_level", "det_rows")]


# -- the figure function ------------------------------------------------------------------------
def test_detection_gallery_exported_and_boxes_frame():
    for name in D.__all__:
        assert getattr(figures, name) is getattr(D, name)
    frame = D.boxes_frame(BOXES)
    assert frame["gt"].tolist() == [0, 1, 0, 0, 1, 2] and frame["image_id"].tolist() == [11, 11, 12, 13, 13, 13]
    assert D.image_weights(pd.DataFrame({"instance_id": [1, 1, 2], "weight": [0.2, 0.4, 1.0]})) == \
        pytest.approx({1: 0.3, 2: 1.0})
    assert D.class_label(CLASSES, 1) == "car" and D.class_label(CLASSES, 9) == "9"


def test_detection_gallery_one_shape_per_box_coloured_by_weight():
    images = {13: np.zeros((32, 32)), 11: np.ones((3, 32, 32)) * 0.5}  # grey HxW and CHW both draw
    boxes = D.boxes_frame(BOXES)
    fig = D.detection_gallery(images, boxes, {11: 0.2, 13: 0.8}, class_names=CLASSES, ncols=2)
    assert [t.type for t in fig.data if t.type == "image"] == ["image", "image"]
    assert np.asarray(fig.data[0].z).shape == (32, 32, 3)
    assert len(fig.layout.shapes) == 5  # image 12 is not shown
    colours = [s.line.color for s in fig.layout.shapes]
    assert colours[:3] == [pcolors.sample_colorscale("Viridis", [1.0])[0]] * 3  # image 13 is the max
    assert colours[3:] == [pcolors.sample_colorscale("Viridis", [0.0])[0]] * 2
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0.2, 0.8)
    assert (fig.layout.shapes[0].x0, fig.layout.shapes[0].y1) == (0, 10) and fig.layout.shapes[3].xref == "x2"
    assert [a.text for a in fig.layout.annotations][:2] == ["#13 w=0.800", "#11 w=0.200"]
    markers = [t for t in fig.data if t.type == "scatter"]
    assert list(markers[0].marker.color) == [0.8] * 3 and markers[0].marker.coloraxis == "coloraxis"
    assert markers[1].text[1] == "#11 pedestrian<br>w=0.2000"  # label 2 of 1..K


def test_detection_gallery_own_box_weights_fixed_scale_and_missing():
    boxes = D.boxes_frame(BOXES).assign(weight=[0.0, 1.0, np.nan, 0.5, np.nan, 0.25])
    fig = D.detection_gallery({11: np.zeros((32, 32, 3)), 13: np.zeros((32, 32, 3))}, boxes, {11: 0.7},
                              cmin=0.0, cmax=1.0)
    expected = D.weight_colors([0.0, 1.0, 0.5, np.nan, 0.25], "Viridis", 0.0, 1.0)
    assert [s.line.color for s in fig.layout.shapes] == expected
    assert expected[3] == D._NO_WEIGHT  # neither its own nor an image weight
    assert D.weight_colors([0.5, 0.5]) == [pcolors.sample_colorscale("Viridis", [0.0])[0]] * 2
    empty = D.detection_gallery({11: np.zeros((8, 8, 3))}, None, None)
    assert len(empty.layout.shapes) == 0 and len(empty.data) == 1
