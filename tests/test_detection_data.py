"""Detection data: seeded traffic scenes, COCO round trip, KITTI conversion, malformed files."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from kd_engine.data.detection import (
    DetectionDataset, detection_collate, generate_scenes, kitti_to_coco, load_coco, write_coco,
    write_scenes,
)
from kd_engine.errors import DataError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def scenes():
    return generate_scenes(60, seed=0)


def by_image(coco):
    out: dict[int, list] = {m["id"]: [] for m in coco["images"]}
    for a in coco["annotations"]:
        out[a["image_id"]].append(a)
    return out


# ---------------------------------------------------------------- generator
def test_deterministic_per_seed_and_varies_across_seeds(scenes):
    again = generate_scenes(60, seed=0)
    assert np.array_equal(scenes.images, again.images) and scenes.coco == again.coco
    other = generate_scenes(6, seed=1)
    assert not np.array_equal(scenes.images[:6], other.images)
    # image i depends only on (seed, i): a shorter run is a prefix of a longer one
    short = generate_scenes(4, seed=0)
    assert np.array_equal(short.images, scenes.images[:4])
    assert scenes.images.shape == (60, 3, 128, 128) and scenes.images.dtype == np.float32
    assert 0.0 <= scenes.images.min() and scenes.images.max() <= 1.0


def test_boxes_inside_image_and_sane_class_counts(scenes):
    anns = scenes.coco["annotations"]
    boxes = np.array([a["bbox"] for a in anns])
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 128).all()
    assert (boxes[:, 1] + boxes[:, 3] <= 128).all() and (boxes[:, 2:] >= 3).all()
    counts = np.bincount([a["category_id"] for a in anns], minlength=4)[1:]
    assert counts.min() >= 20 and counts[0] == counts.max()  # all classes, cars most common
    per_image = [len(v) for v in by_image(scenes.coco).values()]
    assert max(per_image) <= 6 and np.mean(per_image) > 2
    assert [c["name"] for c in scenes.coco["categories"]] == ["car", "pedestrian", "cyclist"]
    assert len({a["id"] for a in anns}) == len(anns) and min(a["id"] for a in anns) == 1


def test_perspective_boxes_grow_towards_the_bottom(scenes):
    for cls in (1, 2, 3):
        b = np.array([a["bbox"] for a in scenes.coco["annotations"] if a["category_id"] == cls])
        bottom, height = b[:, 1] + b[:, 3], b[:, 3]
        assert np.corrcoef(bottom, height)[0, 1] > 0.6, cls
        near, far = height[bottom > np.median(bottom)], height[bottom <= np.median(bottom)]
        assert near.mean() > 1.5 * far.mean()


def test_occlusion_fraction_and_drop_rule():
    crowded = dict(n_images=20, seed=5, objects=(8, 10))
    s = generate_scenes(**crowded)
    occ = np.array([a["occluded"] for a in s.coco["annotations"]])
    assert s.stats["dropped_occluded"] > 0 and occ.max() <= 0.8 and (occ > 0.2).sum() > 5
    keep_all = generate_scenes(**crowded, max_occluded=1.0)
    assert np.array_equal(keep_all.images, s.images)
    extra = len(keep_all.coco["annotations"]) - len(s.coco["annotations"])
    assert extra == s.stats["dropped_occluded"]
    assert sum(a["occluded"] > 0.8 for a in keep_all.coco["annotations"]) == extra
    apart = generate_scenes(**crowded, occlusion=False)
    assert all(a["occluded"] == 0 for a in apart.coco["annotations"])
    for anns in by_image(apart.coco).values():
        for i, a in enumerate(anns):
            for b in anns[i + 1:]:
                ax, ay, aw, ah = a["bbox"]
                bx, by, bw, bh = b["bbox"]
                assert ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay


def test_label_noise_rates_and_clean_file_stays_clean():
    kw = dict(n_images=120, seed=2)
    clean = generate_scenes(**kw)
    noisy = generate_scenes(**kw, wrong_class_rate=0.2, drop_box_rate=0.1, box_jitter=0.3,
                            jitter_rate=0.3)
    assert np.array_equal(clean.images, noisy.images)
    strip = [{k: v for k, v in a.items() if k != "noise"} for a in noisy.coco_clean["annotations"]]
    assert strip == [{k: v for k, v in a.items() if k != "noise"}
                     for a in clean.coco_clean["annotations"]]
    truth = {a["id"]: a for a in noisy.coco_clean["annotations"]}
    kinds = np.array([a["noise"] for a in truth.values()])
    n = len(kinds)
    assert n > 300
    for kind, rate in (("dropped", 0.1), ("wrong_class", 0.2), ("jitter", 0.3), ("none", 0.4)):
        assert abs((kinds == kind).mean() - rate) < 0.06, kind
    written = {a["id"]: a for a in noisy.coco["annotations"]}
    assert set(written) == {i for i, a in truth.items() if a["noise"] != "dropped"}
    for i, a in written.items():
        t = truth[i]
        assert a["noise"] == t["noise"]
        assert (a["category_id"] != t["category_id"]) == (a["noise"] == "wrong_class")
        assert (a["bbox"] != t["bbox"]) == (a["noise"] == "jitter")
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 128 and y + h <= 128
    assert all(a["noise"] == "none" for a in clean.coco["annotations"])


def test_bad_generator_params():
    with pytest.raises(ValueError):
        generate_scenes(2, wrong_class_rate=0.7, drop_box_rate=0.5)
    with pytest.raises(ValueError):
        generate_scenes(2, objects=(3, 1))


# ---------------------------------------------------------------- COCO round trip
def test_coco_round_trip(tmp_path, scenes):
    small = generate_scenes(5, seed=4, wrong_class_rate=0.3)
    paths = write_scenes(small, tmp_path)
    ds = load_coco(paths["annotations"], paths["image_dir"])
    assert isinstance(ds, DetectionDataset) and len(ds) == 5 and ds.ids == [1, 2, 3, 4, 5]
    assert ds.category_names == ["car", "pedestrian", "cyclist"] and ds.num_categories == 3
    anns = by_image(small.coco)
    for k in range(5):
        img, target, iid = ds[k]
        assert iid == k + 1 and target["image_id"] == k + 1
        assert img.shape == (3, 128, 128) and img.dtype == torch.float32
        assert torch.allclose(img, torch.from_numpy(small.images[k]), atol=0.5 / 255 + 1e-6)
        want = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns[k + 1])]
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert torch.allclose(target["boxes"], torch.tensor(want).reshape(-1, 4), atol=1e-4)
        assert target["labels"].tolist() == [a["category_id"] for a in anns[k + 1]]
        assert target["ann_ids"].tolist() == [a["id"] for a in anns[k + 1]]
    clean = load_coco(paths["annotations_clean"], paths["image_dir"])
    assert len(clean.coco.anns) == len(small.coco_clean["annotations"])
    images, targets, ids = next(iter(DataLoader(ds, batch_size=2, collate_fn=ds.collate)))
    assert len(images) == 2 and len(targets) == 2 and ids.tolist() == [1, 2]
    assert ds.images([2, 1]).shape == (2, 128, 128, 3)
    sub = ds.subset([3, 5])
    assert len(sub) == 2 and sub[1][2] == 5


def write_folder(tmp_path: Path, coco: dict, sizes=((32, 32), (32, 32))) -> tuple[Path, Path]:
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    for k, (w, h) in enumerate(sizes, start=1):
        Image.new("RGB", (w, h), (k * 40, 0, 0)).save(img_dir / f"{k}.png")
    return write_coco(coco, tmp_path / "ann.json"), img_dir


def valid_coco() -> dict:
    return {"images": [{"id": 1, "file_name": "1.png", "width": 32, "height": 32},
                       {"id": 2, "file_name": "2.png", "width": 32, "height": 32}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 9, "bbox": [2, 3, 10, 5],
                             "iscrowd": 0},
                            {"id": 8, "image_id": 2, "category_id": 5, "bbox": [-0.5, 0, 32.6, 8]},
                            {"id": 9, "image_id": 2, "category_id": 9, "bbox": [0, 0, 4, 4],
                             "iscrowd": 1}],
            "categories": [{"id": 9, "name": "bus"}, {"id": 5, "name": "person"}]}


def test_real_coco_category_gaps_crowd_and_clipping(tmp_path):
    ann, img_dir = write_folder(tmp_path, valid_coco())
    ds = load_coco(ann, img_dir)
    assert ds.category_names == ["person", "bus"] and ds.label_to_cat == {1: 5, 2: 9}
    _, t1, _ = ds[0]
    assert t1["labels"].tolist() == [2] and t1["boxes"].tolist() == [[2, 3, 12, 8]]
    _, t2, _ = ds[1]  # the crowd box is not a target; the 0.5/0.6 px overhang is clipped
    assert t2["labels"].tolist() == [1] and t2["boxes"].tolist() == [[0, 0, 32, 8]]
    assert len(ds.coco.anns) == 3  # but the crowd region stays in the index for COCOeval


# ---------------------------------------------------------------- malformed files
def expect_error(ann: Path, img_dir: Path, *fragments: str) -> str:
    with pytest.raises(DataError) as e:
        load_coco(ann, img_dir)
    msg = str(e.value)
    assert "\n" not in msg and str(ann) in msg, msg
    for f in fragments:
        assert f in msg, msg
    return msg


def broken(tmp_path, edit) -> tuple[Path, Path]:
    coco = valid_coco()
    edit(coco)
    return write_folder(tmp_path, coco)


def test_error_not_json(tmp_path):
    ann, img_dir = write_folder(tmp_path, valid_coco())
    ann.write_text('{"images": [\n  {"id": 1,,}\n')
    expect_error(ann, img_dir, "not valid JSON", "line 2")


def test_error_missing_annotations_key(tmp_path):
    expect_error(*broken(tmp_path, lambda c: c.pop("annotations")), "'annotations'")


def test_error_missing_images_key(tmp_path):
    expect_error(*broken(tmp_path, lambda c: c.pop("images")), "'images'")


def test_error_box_outside_image(tmp_path):
    edit = lambda c: c["annotations"][0].update(bbox=[20, 20, 30, 10])  # noqa: E731
    expect_error(*broken(tmp_path, edit), "annotation id 7", "outside image id 1")


def test_error_non_positive_box(tmp_path):
    edit = lambda c: c["annotations"][1].update(bbox=[1, 1, 0, 5])  # noqa: E731
    expect_error(*broken(tmp_path, edit), "annotation id 8", "non-positive width or height")


def test_error_unknown_category(tmp_path):
    edit = lambda c: c["annotations"][0].update(category_id=42)  # noqa: E731
    expect_error(*broken(tmp_path, edit), "annotation id 7", "unknown category_id 42")


def test_error_annotation_without_image_entry(tmp_path):
    edit = lambda c: c["annotations"][1].update(image_id=99)  # noqa: E731
    expect_error(*broken(tmp_path, edit), "annotation id 8", "image_id 99")


def test_error_missing_image_file(tmp_path):
    ann, img_dir = write_folder(tmp_path, valid_coco())
    (img_dir / "2.png").unlink()
    expect_error(ann, img_dir, "image id 2", "image file missing", "2.png")


def test_error_duplicate_image_ids(tmp_path):
    edit = lambda c: c["images"][1].update(id=1)  # noqa: E731
    expect_error(*broken(tmp_path, edit), "duplicate image id 1")


def test_error_duplicate_annotation_id_and_image_size_mismatch(tmp_path):
    edit = lambda c: c["annotations"][1].update(id=7)  # noqa: E731
    expect_error(*broken(tmp_path, edit), "duplicate annotation id 7")
    ann, img_dir = write_folder(tmp_path, valid_coco(), sizes=((32, 32), (40, 32)))
    expect_error(ann, img_dir, "image id 2", "40x32")


# ---------------------------------------------------------------- KITTI
KITTI_A = """Car 0.00 0 -1.57 5.00 10.00 25.50 20.00 1.5 1.6 3.9 1 1 10 0.0
Pedestrian 0.00 1 0.2 30.00 8.00 34.00 20.00 1.7 0.6 0.8 2 1 9 0.1
Van 0.00 0 0.1 1.00 1.00 9.00 6.00 2 2 4 1 1 20 0.0
DontCare -1 -1 -10 0.00 0.00 5.00 5.00 -1 -1 -1 -1000 -1000 -1000 -10
"""
KITTI_B = """Cyclist 0.30 2 0.5 10.00 5.00 20.00 19.50 1.7 0.6 1.8 3 1 8 0.2

Truck 0.00 0 0.1 1.00 1.00 9.00 6.00 3 2 6 1 1 30 0.0
"""


def kitti_dir(tmp_path, a=KITTI_A, b=KITTI_B):
    lab, img = tmp_path / "label_2", tmp_path / "image_2"
    lab.mkdir()
    img.mkdir()
    for stem, text in (("000000", a), ("000001", b)):
        (lab / f"{stem}.txt").write_text(text)
        Image.new("RGB", (40, 20)).save(img / f"{stem}.png")
    return lab, img


def test_kitti_to_coco(tmp_path):
    lab, img = kitti_dir(tmp_path)
    coco = kitti_to_coco(lab, img, tmp_path / "kitti.json")
    assert json.loads((tmp_path / "kitti.json").read_text()) == coco
    assert [m["file_name"] for m in coco["images"]] == ["000000.png", "000001.png"]
    got = [(a["image_id"], a["category_id"], a["iscrowd"], a["bbox"]) for a in coco["annotations"]]
    assert got == [(1, 1, 0, [5.0, 10.0, 20.5, 10.0]), (1, 2, 0, [30.0, 8.0, 4.0, 12.0]),
                   (1, 1, 1, [1.0, 1.0, 8.0, 5.0]), (2, 3, 0, [10.0, 5.0, 10.0, 14.5])]
    ds = load_coco(tmp_path / "kitti.json", img)
    _, t, _ = ds[0]
    assert t["labels"].tolist() == [1, 2]  # the Van is an ignore region, not a target
    no_crowd = kitti_to_coco(lab, img, tmp_path / "k2.json", ignored_as_crowd=False)
    assert len(no_crowd["annotations"]) == 3


def test_kitti_malformed_lines(tmp_path):
    lab, img = kitti_dir(tmp_path, b="Cyclist 0.30 2 0.5\n")
    with pytest.raises(DataError, match=r"000001\.txt:1: expected 15 fields"):
        kitti_to_coco(lab, img, tmp_path / "out.json")
    (lab / "000001.txt").write_text(KITTI_B.replace("19.50", "abc"))
    with pytest.raises(DataError, match=r"000001\.txt:1: field 'y2' is not a number: 'abc'"):
        kitti_to_coco(lab, img, tmp_path / "out.json")
    (lab / "000001.txt").write_text(KITTI_B.replace("Truck", "Bus"))
    with pytest.raises(DataError, match=r"000001\.txt:3: unknown KITTI type 'Bus'"):
        kitti_to_coco(lab, img, tmp_path / "out.json")
    (lab / "000001.txt").write_text(KITTI_B.replace("20.00 19.50", "60.00 19.50"))
    with pytest.raises(DataError, match=r"000001\.txt:1: box .* lies outside"):
        kitti_to_coco(lab, img, tmp_path / "out.json")
    (img / "000001.png").unlink()
    with pytest.raises(DataError, match=r"000001\.txt: no image 000001"):
        kitti_to_coco(lab, img, tmp_path / "out.json")


# ---------------------------------------------------------------- picture
def test_example_picture(tmp_path):
    spec = importlib.util.spec_from_file_location("show_scene", REPO / "scripts" / "show_scene.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.save_example(tmp_path / "scene.png", n=2, cols=2)
    with Image.open(out) as im:
        assert im.size == (2 * 384 + 4, 384)
    item = (torch.zeros(3, 4, 4), {"boxes": torch.zeros(0, 4)}, 3)
    images, targets, ids = detection_collate([item])
    assert ids.tolist() == [3] and len(images) == 1
