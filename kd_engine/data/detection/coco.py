"""COCO-format detection data: the only way the engine reads detection data.

``load_coco(annotation_file, image_dir)`` checks the whole file and every image header before it
returns, so a bad annotation stops a run before training with a one-line ``DataError`` naming the
file and the image or annotation id, never half-way through an epoch.

Decisions:
- A box may poke out of its image by up to ``CLIP_TOLERANCE`` (1 px, for rounding and KITTI's
  inclusive pixel coordinates); such boxes are clipped. Anything farther out is rejected.
- ``iscrowd = 1`` annotations (KITTI's Van / Person_sitting, COCO crowds) are validated and kept in
  ``.coco`` so COCOeval ignores detections on them, but they are not training targets.
- Annotation ids must be positive: pycocotools' COCOeval treats id 0 as "unmatched".
- Category ids may have gaps (real COCO does); labels are contiguous 1..K in category-id order,
  with 0 left for torchvision's background, so a detector needs ``num_categories + 1`` classes.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from kd_engine.errors import DataError

CLIP_TOLERANCE = 1.0


def _num(v: Any) -> bool:
    """A finite number; an integer too large for a float (JSON allows any length) is not one."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Checker:
    """Raises one-line DataErrors that always start with the annotation file's path."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, msg: str):
        raise DataError(f"{self.path}: {msg}")

    def parse(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            self.fail(f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})")
        except ValueError as e:  # e.g. an integer longer than Python's digit limit
            self.fail(f"not readable JSON ({str(e).splitlines()[0]})")
        except UnicodeDecodeError:
            self.fail("not valid JSON (not UTF-8 text)")
        if not isinstance(data, dict):
            self.fail("not a COCO file: expected a JSON object with images, annotations, "
                      "categories")
        for key in ("images", "annotations", "categories"):
            if key not in data:
                self.fail(f"missing key {key!r} (a COCO file needs images, annotations and "
                          "categories)")
            if not isinstance(data[key], list):
                self.fail(f"{key!r} must be a list, got {type(data[key]).__name__}")
        return data

    def categories(self, cats: list) -> dict[int, str]:
        out: dict[int, str] = {}
        for i, c in enumerate(cats):
            if not (isinstance(c, dict) and _int(c.get("id")) and isinstance(c.get("name"), str)):
                self.fail(f"categories[{i}] needs an integer 'id' and a string 'name'")
            if c["id"] in out:
                self.fail(f"duplicate category id {c['id']} (categories[{i}])")
            out[c["id"]] = c["name"]
        if not out:
            self.fail("no categories")
        return out

    def images(self, images: list) -> dict[int, dict]:
        out: dict[int, dict] = {}
        for i, m in enumerate(images):
            if not isinstance(m, dict) or not _int(m.get("id")):
                self.fail(f"images[{i}] needs an integer 'id'")
            if m["id"] in out:
                self.fail(f"duplicate image id {m['id']} (images[{i}])")
            if not isinstance(m.get("file_name"), str) or not m["file_name"]:
                self.fail(f"image id {m['id']}: missing 'file_name'")
            for k in ("width", "height"):
                if not _int(m.get(k)) or m[k] <= 0:
                    self.fail(f"image id {m['id']}: {k!r} must be a positive integer, "
                              f"got {m.get(k)!r}")
            out[m["id"]] = m
        return out

    def annotation(self, i: int, a: Any, images: dict, cats: dict, seen: set) -> None:
        """Check one annotation; clips a box that is out of bounds by at most CLIP_TOLERANCE."""
        if not isinstance(a, dict) or not _int(a.get("id")):
            self.fail(f"annotations[{i}] needs an integer 'id'")
        aid = a["id"]
        where = f"annotation id {aid}"
        if aid <= 0:
            self.fail(f"{where}: ids must be positive (COCOeval treats 0 as unmatched)")
        if aid in seen:
            self.fail(f"duplicate annotation id {aid} (annotations[{i}])")
        seen.add(aid)
        if not _int(a.get("image_id")) or a["image_id"] not in images:
            self.fail(f"{where}: image_id {a.get('image_id')!r} has no entry in 'images'")
        if not _int(a.get("category_id")) or a["category_id"] not in cats:
            self.fail(f"{where}: unknown category_id {a.get('category_id')!r} "
                      f"(known: {', '.join(map(str, sorted(cats)))})")
        if a.get("iscrowd", 0) not in (0, 1):
            self.fail(f"{where}: iscrowd must be 0 or 1, got {a.get('iscrowd')!r}")
        box = a.get("bbox")
        if not isinstance(box, list) or len(box) != 4 or not all(_num(v) for v in box):
            self.fail(f"{where}: bbox must be [x, y, width, height] of 4 finite numbers, "
                      f"got {box!r}")
        x, y, w, h = box
        if w <= 0 or h <= 0:
            self.fail(f"{where}: bbox {box} has non-positive width or height")
        m = images[a["image_id"]]
        W, H, tol = m["width"], m["height"], CLIP_TOLERANCE
        if x < -tol or y < -tol or x + w > W + tol or y + h > H + tol:
            self.fail(f"{where}: bbox {box} lies outside image id {m['id']} ({W}x{H}), "
                      f"by more than the {tol:g} px that would be clipped")
        x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, W), min(y + h, H)
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            self.fail(f"{where}: bbox {box} has no area inside image id {m['id']} ({W}x{H})")
        a["bbox"] = [x0, y0, x1 - x0, y1 - y0]
        if "area" in a and not (_num(a["area"]) and a["area"] >= 0):
            self.fail(f"{where}: area must be a non-negative number, got {a['area']!r}")
        a.setdefault("area", a["bbox"][2] * a["bbox"][3])
        a.setdefault("iscrowd", 0)

    def files(self, images: dict, image_dir: Path) -> None:
        """Every image must exist and its header must match the declared size."""
        for iid, m in images.items():
            p = image_dir / m["file_name"]
            if not p.is_file():
                self.fail(f"image id {iid}: image file missing: {p}")
            try:
                with Image.open(p) as im:
                    size = im.size
            except Exception as e:  # PIL raises several types for unreadable files
                self.fail(f"image id {iid}: cannot read image {p} ({type(e).__name__})")
            if size != (m["width"], m["height"]):
                self.fail(f"image id {iid}: {p} is {size[0]}x{size[1]} but the file says "
                          f"{m['width']}x{m['height']}")


class DetectionDataset(Dataset):
    """Items are ``(image float CxHxW in [0,1], target, image_id)`` for torchvision detectors.

    ``target = {"boxes": FloatTensor[N,4] xyxy, "labels": Int64Tensor[N] in 1..K,
    "image_id": int, "ann_ids": Int64Tensor[N], "noisy": BoolTensor[N]}``; ``ann_ids`` lets
    per-box records name the GT, ``noisy`` marks labels the scene generator corrupted.
    ``.coco`` is the pycocotools index of the whole file, for COCOeval.
    """

    def __init__(self, coco: COCO, image_dir: Path, annotation_file: Path,
                 ids: Sequence[int] | None = None, cache: bool = True):
        self.coco, self.image_dir, self.annotation_file = coco, image_dir, annotation_file
        self.cat_ids = sorted(coco.cats)
        self.category_names = [coco.cats[c]["name"] for c in self.cat_ids]
        self.cat_to_label = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.label_to_cat = {i + 1: c for i, c in enumerate(self.cat_ids)}
        self.ids = [int(i) for i in (sorted(coco.imgs) if ids is None else ids)]
        self._pos = {iid: k for k, iid in enumerate(self.ids)}
        self._cache: dict[int, np.ndarray] | None = {} if cache else None
        # image id -> corrupted annotations (dropped ones included), when the labels' truth is
        # known (procedural scenes with label noise); None for user data.
        self.noise: dict[int, int] | None = None

    @property
    def num_categories(self) -> int:
        """K foreground categories; torchvision detectors take ``num_classes = K + 1``."""
        return len(self.cat_ids)

    def __len__(self) -> int:
        return len(self.ids)

    def target(self, image_id: int) -> dict:
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                               a["bbox"][1] + a["bbox"][3]] for a in anns],
                             dtype=torch.float32).reshape(-1, 4)
        return {"boxes": boxes,
                "labels": torch.tensor([self.cat_to_label[a["category_id"]] for a in anns],
                                       dtype=torch.int64),
                "image_id": int(image_id),
                "ann_ids": torch.tensor([a["id"] for a in anns], dtype=torch.int64),
                "noisy": torch.tensor([a.get("noise", "none") != "none" for a in anns],
                                      dtype=torch.bool)}

    def pixels(self, image_id: int) -> np.ndarray:
        """The image as (H, W, 3) uint8, cached after the first read (scenes are small)."""
        if self._cache is not None and image_id in self._cache:
            return self._cache[image_id]
        path = self.image_dir / self.coco.imgs[image_id]["file_name"]
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        if self._cache is not None:
            self._cache[image_id] = arr
        return arr

    def __getitem__(self, i: int):
        iid = self.ids[i]
        img = torch.from_numpy(self.pixels(iid).copy()).permute(2, 0, 1).float().div_(255.0)
        return img, self.target(iid), iid

    def images(self, ids: Sequence[int]):
        """Gallery images, float32 (H,W,3) in [0,1]: stacked when all sizes agree, else a list."""
        out = []
        for i in ids:
            if int(i) not in self._pos:
                raise DataError(f"image id {int(i)} is not in {self.annotation_file}")
            out.append(self.pixels(int(i)).astype(np.float32) / 255.0)
        if out and len({a.shape for a in out}) == 1:
            return np.stack(out)
        return out

    def subset(self, image_ids: Sequence[int]) -> "DetectionDataset":
        """The same file restricted to some images (for splits); shares the COCO index."""
        missing = [i for i in image_ids if int(i) not in self._pos]
        if missing:
            raise DataError(f"image id {missing[0]} is not in {self.annotation_file}")
        sub = DetectionDataset(self.coco, self.image_dir, self.annotation_file, image_ids,
                               cache=self._cache is not None)
        sub._cache, sub.noise = self._cache, self.noise
        return sub

    @staticmethod
    def collate(batch):
        return detection_collate(batch)


def detection_collate(batch) -> tuple[list[torch.Tensor], list[dict], torch.Tensor]:
    """Lists of images and targets (what torchvision detectors take) plus the image ids."""
    images, targets, ids = zip(*batch)
    return list(images), list(targets), torch.tensor(ids, dtype=torch.int64)


def load_coco(annotation_file: str | Path, image_dir: str | Path, *, check_images: bool = True,
              cache: bool = True) -> DetectionDataset:
    """Validate a COCO file (and its images' headers) completely, then index it."""
    path, image_dir = Path(annotation_file), Path(image_dir)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder not found (for {path})")
    chk = _Checker(path)
    data = chk.parse()
    cats = chk.categories(data["categories"])
    images = chk.images(data["images"])
    seen: set[int] = set()
    for i, a in enumerate(data["annotations"]):
        chk.annotation(i, a, images, cats, seen)
    if check_images:
        chk.files(images, image_dir)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return DetectionDataset(coco, image_dir, path, cache=cache)


def write_coco(coco: dict, out_file: str | Path) -> Path:
    """Write a COCO dict as JSON (parent folders created)."""
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(coco), encoding="utf-8")
    return out


def write_images(images: np.ndarray, file_names: Sequence[str], image_dir: str | Path) -> None:
    """Save (N,3,H,W) float images in [0,1] as 8-bit PNGs."""
    d = Path(image_dir)
    d.mkdir(parents=True, exist_ok=True)
    for img, name in zip(images, file_names):
        arr = (np.clip(img, 0, 1).transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)
        Image.fromarray(arr).save(d / name)


def write_scenes(scenes, out_dir: str | Path) -> dict[str, Path]:
    """Write a ``SceneSet``: images/*.png, annotations.json (written labels, noise applied) and
    annotations_clean.json (the truth, each annotation's ``noise`` saying what was done to it)."""
    out = Path(out_dir)
    write_images(scenes.images, [m["file_name"] for m in scenes.coco["images"]], out / "images")
    return {"annotations": write_coco(scenes.coco, out / "annotations.json"),
            "annotations_clean": write_coco(scenes.coco_clean, out / "annotations_clean.json"),
            "image_dir": out / "images"}
