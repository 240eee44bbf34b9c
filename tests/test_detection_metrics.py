"""COCO mAP wiring: perfect, empty and degraded detections, and a real (untrained) detector."""
from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from kd_engine.data.detection import generate_scenes, load_coco, write_scenes
from kd_engine.detection_metrics import coco_map, per_image_detection_records, predict_detections
from kd_engine.models.detection import build_detector

# COCOeval divides by tp + fp + eps, so "perfect" is 1 - 2e-16, not exactly 1.
ONE = pytest.approx(1.0, abs=1e-9)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    paths = write_scenes(generate_scenes(n_images=4, image_size=64),
                         tmp_path_factory.mktemp("scenes"))
    return load_coco(paths["annotations"], paths["image_dir"])


def _truth(ds):
    """Detections equal to the ground truth, score 1 (crowd boxes are not targets)."""
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]),
             "score": 1.0} for a in ds.coco.dataset["annotations"] if not a.get("iscrowd", 0)]


def _present(ds):
    return {ds.coco.cats[a["category_id"]]["name"] for a in ds.coco.dataset["annotations"]
            if not a.get("iscrowd", 0)}


def test_perfect_detections_score_one(dataset):
    dets = _truth(dataset)
    before = [dict(d) for d in dets]
    r = coco_map(dataset, dets)
    assert dets == before  # the caller's list is not modified by loadRes
    assert r["mAP"] == ONE and r["AP50"] == ONE and r["AP75"] == ONE
    for name in dataset.category_names:
        if name in _present(dataset):
            assert r["per_class_AP"][name] == ONE
        else:
            assert math.isnan(r["per_class_AP"][name])
    assert "Average Precision" in r["summary"] and "IoU=0.50:0.95" in r["summary"]
    recs = per_image_detection_records(dataset, dets)
    assert all(x["tp"] == x["n_gt"] and x["fp"] == 0 and x["fn"] == 0 for x in recs)


def test_no_detections_give_zero(dataset, capsys):
    r = coco_map(dataset, [])
    assert r["mAP"] == 0.0 and r["AP50"] == 0.0 and r["AP75"] == 0.0
    assert all(r["per_class_AP"][n] == 0.0 for n in _present(dataset))
    assert r["num_detections"] == 0 and r["summary"]
    assert capsys.readouterr().out == ""  # pycocotools' printing is captured
    recs = per_image_detection_records(dataset, [])
    assert [x["fn"] for x in recs] == [x["n_gt"] for x in recs]


def test_shifted_boxes_lower_ap(dataset):
    # Shifting a box by half its width leaves IoU 1/3 with its own ground truth: below 0.5.
    shifted = [{**d, "bbox": [d["bbox"][0] + d["bbox"][2] / 2, *d["bbox"][1:]]}
               for d in _truth(dataset)]
    r = coco_map(dataset, shifted)
    assert r["mAP"] < 0.1 and r["AP50"] < 0.34
    recs = per_image_detection_records(dataset, shifted)
    assert sum(x["tp"] for x in recs) < sum(x["fp"] for x in recs)


def test_dropping_half_of_one_class_lowers_its_ap(dataset):
    dets = _truth(dataset)
    counts = Counter(d["category_id"] for d in dets)
    cat, n = counts.most_common(1)[0]
    assert n >= 2
    seen, kept = 0, []
    for d in dets:
        if d["category_id"] == cat:
            seen += 1
            if seen % 2 == 0:
                continue
        kept.append(d)
    r = coco_map(dataset, kept)
    name = dataset.coco.cats[cat]["name"]
    recall = sum(d["category_id"] == cat for d in kept) / n
    # Precision 1 up to the reached recall, 0 beyond: AP is the share of the 101 recall points.
    assert r["per_class_AP"][name] == pytest.approx((math.floor(recall * 100) + 1) / 101)
    assert r["per_class_AP"][name] < 0.99 and r["mAP"] < 0.99
    for other in _present(dataset) - {name}:
        assert r["per_class_AP"][other] == ONE


def test_predict_detections_on_untrained_retinanet(dataset):
    torch.manual_seed(0)
    model = build_detector("retinanet", 64, num_classes=dataset.num_categories + 1, width=4,
                           fpn_channels=16, score_thresh=0.0, detections_per_img=20)
    model.train()
    dets = predict_detections(model, dataset, batch_size=3)
    assert model.training  # mode restored
    assert dets, "score_thresh=0 should keep some detections"
    cats, ids = set(dataset.label_to_cat.values()), set(dataset.ids)
    for d in dets:
        assert set(d) == {"image_id", "category_id", "bbox", "score"}
        assert d["image_id"] in ids and d["category_id"] in cats
        assert len(d["bbox"]) == 4 and d["bbox"][2] >= 0 and d["bbox"][3] >= 0
        assert all(isinstance(v, float) for v in d["bbox"]) and 0.0 <= d["score"] <= 1.0
    assert Counter(d["image_id"] for d in dets).most_common(1)[0][1] <= 20
    r = coco_map(dataset, dets)
    assert 0.0 <= r["mAP"] <= 1.0 and r["num_detections"] == len(dets)


def test_subset_is_scored_on_its_own_images(dataset):
    first = dataset.subset(dataset.ids[:1])
    dets = [d for d in _truth(dataset) if d["image_id"] == first.ids[0]]
    assert coco_map(first, dets)["AP50"] == ONE  # other images' boxes are not counted as missed
    assert coco_map(dataset, dets)["AP50"] < 0.99
