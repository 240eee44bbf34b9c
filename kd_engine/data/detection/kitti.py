"""KITTI object labels (label_2) to COCO JSON, so KITTI enters the engine through ``load_coco``.

A label line is ``type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry`` (a 16th field, a
detection score, is accepted and ignored). Type mapping, following KITTI's own evaluation:
- Car, Pedestrian, Cyclist -> categories car, pedestrian, cyclist (the scene generator's ids);
- Van -> car and Person_sitting -> pedestrian as ``iscrowd = 1``: COCOeval then neither rewards
  nor penalises detections on them, and the loader does not train on them
  (``ignored_as_crowd=False`` skips them instead);
- Truck, Tram, Misc and DontCare are skipped.
A malformed line raises a one-line DataError naming ``file:line``.
"""
from __future__ import annotations

import math
from pathlib import Path

from PIL import Image

from kd_engine.data.detection.coco import CLIP_TOLERANCE, write_coco
from kd_engine.data.detection.scenes import CATEGORIES
from kd_engine.errors import DataError

FIELDS = ("type", "truncated", "occluded", "alpha", "x1", "y1", "x2", "y2",
          "h", "w", "l", "x", "y", "z", "ry")
KEPT = {"Car": 1, "Pedestrian": 2, "Cyclist": 3}
IGNORED = {"Van": 1, "Person_sitting": 2}
SKIPPED = {"Truck", "Tram", "Misc", "DontCare"}
IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def parse_kitti_line(line: str, where: str) -> dict | None:
    """One label line as a dict of typed fields; None for a blank line."""
    parts = line.split()
    if not parts:
        return None
    if len(parts) not in (15, 16):
        raise DataError(f"{where}: expected 15 fields ({' '.join(FIELDS)}), got {len(parts)}")
    out: dict = {"type": parts[0]}
    for name, text in zip(FIELDS[1:], parts[1:15]):
        try:
            value = float(text)
        except ValueError:
            raise DataError(f"{where}: field {name!r} is not a number: {text!r}") from None
        if not math.isfinite(value):
            raise DataError(f"{where}: field {name!r} is not finite: {text!r}")
        out[name] = value
    if out["type"] not in KEPT and out["type"] not in IGNORED and out["type"] not in SKIPPED:
        raise DataError(f"{where}: unknown KITTI type {out['type']!r}")
    return out


def _find_image(image_dir: Path, stem: str, label_file: Path) -> Path:
    for ext in IMAGE_EXTS:
        p = image_dir / f"{stem}{ext}"
        if p.is_file():
            return p
    raise DataError(f"{label_file}: no image {stem}{{{','.join(IMAGE_EXTS)}}} in {image_dir}")


def kitti_to_coco(label_dir: str | Path, image_dir: str | Path, out_file: str | Path,
                  ignored_as_crowd: bool = True) -> dict:
    """Convert every ``*.txt`` in ``label_dir`` (sorted; image ids 1..N in that order) and
    write the COCO JSON to ``out_file``; ``file_name`` is relative to ``image_dir``."""
    label_dir, image_dir = Path(label_dir), Path(image_dir)
    if not label_dir.is_dir():
        raise DataError(f"{label_dir}: KITTI label folder not found")
    files = sorted(label_dir.glob("*.txt"))
    if not files:
        raise DataError(f"{label_dir}: no KITTI label files (*.txt)")
    images, anns = [], []
    for image_id, lf in enumerate(files, start=1):
        img_path = _find_image(image_dir, lf.stem, lf)
        try:
            with Image.open(img_path) as im:
                W, H = im.size
        except Exception as e:  # PIL raises several types for unreadable files
            raise DataError(f"{img_path}: cannot read image ({type(e).__name__})") from None
        images.append({"id": image_id, "file_name": img_path.name, "width": W, "height": H})
        for lineno, line in enumerate(lf.read_text(encoding="utf-8").splitlines(), start=1):
            where = f"{lf}:{lineno}"
            rec = parse_kitti_line(line, where)
            if rec is None or rec["type"] in SKIPPED:
                continue
            crowd = rec["type"] in IGNORED
            if crowd and not ignored_as_crowd:
                continue
            x1, y1, x2, y2 = rec["x1"], rec["y1"], rec["x2"], rec["y2"]
            if x2 <= x1 or y2 <= y1:
                raise DataError(f"{where}: box ({x1}, {y1}, {x2}, {y2}) has non-positive size")
            tol = CLIP_TOLERANCE
            if x1 < -tol or y1 < -tol or x2 > W + tol or y2 > H + tol:
                raise DataError(f"{where}: box ({x1}, {y1}, {x2}, {y2}) lies outside the "
                                f"{W}x{H} image {img_path.name}")
            x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, W), min(y2, H)
            cat = (IGNORED if crowd else KEPT)[rec["type"]]
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                         "iscrowd": int(crowd), "kitti_type": rec["type"],
                         "kitti_truncated": rec["truncated"], "kitti_occluded": rec["occluded"],
                         "source": where})
    coco = {"info": {"description": f"converted from KITTI labels in {label_dir}"},
            "images": images, "annotations": anns, "categories": [dict(c) for c in CATEGORIES]}
    write_coco(coco, out_file)
    return coco
