"""Seeded procedural traffic scenes with COCO boxes: the detection miniature for AID.

Why procedural: the AID experiments need thousands of labelled driving-like images on a 2-core
CPU with no internet. A scene has a sky, a horizon, a road narrowing to a vanishing point, lane
markings, and KITTI's three classes (car, pedestrian, cyclist) drawn as simple shapes whose size
follows perspective: s = 0.25 + 0.75 * (y_bottom - horizon) / (H - horizon). Clutter (off-road
car-coloured boxes, poles, blobs, bars, wheel pairs) provokes false positives.

Rules worth knowing:
- Objects are painted far to near, so nearer objects hide farther ones. A box keeps its full
  extent (clipped to the image); its ``occluded`` field is the hidden fraction of its silhouette.
  Boxes more than ``max_occluded`` hidden (default 0.8) are dropped, and so are boxes under
  ``min_box_size`` px after clipping; ``SceneSet.stats`` counts both.
- Label noise touches only the written labels (``SceneSet.coco``); ``coco_clean`` keeps the truth
  with the same annotation ids. In both, ``noise`` is "none", "wrong_class", "jitter" or
  "dropped" (dropped instances appear only in the clean file), so a notebook can find the
  instances that the teacher cannot fit.
- Image i draws from its own seed sequence (seed, 0, i) and its noise from (seed, 1, i): the
  first k images do not depend on ``n_images``, and the clean scenes not on the noise knobs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = [{"id": 1, "name": "car", "supercategory": "vehicle"},
              {"id": 2, "name": "pedestrian", "supercategory": "person"},
              {"id": 3, "name": "cyclist", "supercategory": "person"}]
CAR, PED, CYC = 1, 2, 3
_SS = 2  # draw at 2x and box-downsample, so far (small) objects are not just pixel noise
CAR_COLOURS = [(200, 30, 30), (35, 65, 185), (230, 200, 40), (235, 235, 235), (40, 40, 45),
               (40, 140, 70), (150, 150, 160)]
SHIRTS = [(220, 90, 30), (60, 160, 200), (180, 40, 140), (240, 240, 90), (90, 200, 90)]
SKIN = [(240, 200, 160), (200, 150, 110), (140, 95, 60)]


@dataclass
class SceneSet:
    """Images (N,3,H,W) float32 in [0,1], the written (noisy) COCO dict and the clean one."""

    images: np.ndarray
    coco: dict
    coco_clean: dict
    stats: dict = field(default_factory=dict)


class _Pen:
    """Draws a primitive on the canvas and, while an object is open, on its silhouette mask."""

    def __init__(self, canvas: Image.Image):
        self.draw, self.size, self._mask = ImageDraw.Draw(canvas), canvas.size, None

    def begin(self) -> None:
        self._img = Image.new("1", self.size, 0)
        self._mask = ImageDraw.Draw(self._img)

    def end(self) -> np.ndarray:
        self._mask = None
        return np.asarray(self._img, dtype=bool)

    def __call__(self, kind: str, xy, fill=None, outline=None, width: float = 1.0) -> None:
        pts = [v * _SS for v in np.asarray(xy, dtype=float).ravel().tolist()]
        w = max(1, int(round(width * _SS)))
        for d, on in ((self.draw, None), (self._mask, 1)):
            if d is None:
                continue
            if kind == "line":
                d.line(pts, fill=fill if on is None else on, width=w)
            else:
                f, o = ((fill, outline) if on is None else
                        (None if fill is None else on, None if outline is None else on))
                getattr(d, kind)(pts, fill=f, outline=o, width=w)


def _pick(rng, colours):
    base = np.asarray(colours[rng.integers(len(colours))], dtype=float)
    return tuple(int(v) for v in np.clip(base + rng.normal(0, 12, 3), 0, 255))


def _car(pen, x0, y0, x1, y1, rng):
    w, h = x1 - x0, y1 - y0
    body, r = _pick(rng, CAR_COLOURS), min(0.12 * w, 0.24 * h)
    pen("polygon", [(x0 + .18 * w, y0 + .42 * h), (x0 + .32 * w, y0), (x1 - .28 * w, y0),
                    (x1 - .14 * w, y0 + .42 * h)], fill=tuple(int(.8 * c) for c in body))
    pen("polygon", [(x0 + .25 * w, y0 + .38 * h), (x0 + .35 * w, y0 + .1 * h),
                    (x1 - .31 * w, y0 + .1 * h), (x1 - .2 * w, y0 + .38 * h)], fill=(150, 200, 230))
    pen("rectangle", [x0, y0 + .4 * h, x1, y1 - .7 * r], fill=body)
    for cx in (x0 + .22 * w, x1 - .22 * w):
        pen("ellipse", [cx - r, y1 - 2 * r, cx + r, y1], fill=(25, 25, 25))


def _pedestrian(pen, x0, y0, x1, y1, rng):
    w, h = x1 - x0, y1 - y0
    pen("rectangle", [x0 + .1 * w, y0 + .55 * h, x0 + .45 * w, y1], fill=(40, 40, 70))
    pen("rectangle", [x1 - .45 * w, y0 + .55 * h, x1 - .1 * w, y1], fill=(40, 40, 70))
    pen("rectangle", [x0, y0 + .18 * h, x1, y0 + .58 * h], fill=_pick(rng, SHIRTS))
    d = min(.2 * h, .9 * w)
    cx = (x0 + x1) / 2
    pen("ellipse", [cx - d / 2, y0, cx + d / 2, y0 + d], fill=_pick(rng, SKIN))


def _cyclist(pen, x0, y0, x1, y1, rng):
    w, h = x1 - x0, y1 - y0
    r, lw = min(.25 * w, .3 * h), max(.6, .05 * h)
    rear, front, cy = x0 + r, x1 - r, y1 - r
    pedal, seat = (x0 + .45 * w, cy), (x0 + .38 * w, y1 - 2.1 * r)
    frame = _pick(rng, CAR_COLOURS)
    for cx in (rear, front):
        pen("ellipse", [cx - r, y1 - 2 * r, cx + r, y1], outline=(20, 20, 20), width=lw)
    pen("line", [(rear, cy), pedal, (front, cy), (front - .1 * w, seat[1]), seat, pedal],
        fill=frame, width=lw)
    shoulder, d = (x0 + .55 * w, y0 + .3 * h), .2 * h
    pen("line", [seat, shoulder], fill=_pick(rng, SHIRTS), width=max(1.0, .12 * w))
    pen("line", [shoulder, (front - .1 * w, seat[1])], fill=(60, 60, 60), width=lw)
    pen("line", [seat, pedal], fill=(40, 40, 70), width=lw * 1.5)
    pen("ellipse", [shoulder[0] - d / 2, y0, shoulder[0] + d / 2, y0 + d], fill=_pick(rng, SKIN))


_DRAW = {CAR: _car, PED: _pedestrian, CYC: _cyclist}


def _background(rng, n, yh, vx, hwb, k):
    """Sky gradient, ground, a road narrowing to (vx, yh), edge lines and dashed lane stripes."""
    rows = np.arange(n * _SS, dtype=float)[:, None] / _SS
    a = np.clip(rows / max(yh, 1), 0, 1)
    sky = (1 - a) * np.array([70, 130, 210]) + a * np.array([200, 220, 240])
    grass = np.array([rng.uniform(60, 110), rng.uniform(110, 150), rng.uniform(50, 80)])
    ground = grass * (0.8 + 0.2 * np.clip((rows - yh) / (n - yh), 0, 1))
    col = np.where(rows < yh, sky, ground)
    canvas = Image.fromarray(np.repeat(col[:, None, :], n * _SS, 1).astype(np.uint8))
    pen = _Pen(canvas)
    hw0 = 0.01 * n

    def rx(u, y):  # x of road coordinate u (-1 left edge, +1 right edge) at row y
        return vx + u * (hw0 + (hwb - hw0) * (y - yh) / (n - yh))

    grey = int(rng.uniform(90, 125))
    pen("polygon", [(rx(-1.05, yh), yh), (rx(1.05, yh), yh), (rx(1.05, n), n), (rx(-1.05, n), n)],
        fill=(grey, grey, grey + 5))
    du = 1.2 * k / hwb

    def stripe(u, ya, yb, colour):
        pen("polygon", [(rx(u - du, ya), ya), (rx(u + du, ya), ya), (rx(u + du, yb), yb),
                        (rx(u - du, yb), yb)], fill=colour)

    for u in (-0.97, 0.97):
        stripe(u, yh, n, (235, 235, 235))
    n_lanes = int(rng.integers(1, 4))
    phase = rng.uniform(0, 1.2)
    for j in range(1, n_lanes + 1):
        u = -1 + 2 * j / (n_lanes + 1)
        colour = (230, 200, 60) if n_lanes == 1 else (235, 235, 235)
        d = 1.0 + phase  # distance in units of the bottom row's depth: y = yh + (n - yh) / d
        while d < 25:
            stripe(u, yh + (n - yh) / (d + 0.6), yh + (n - yh) / d, colour)
            d += 1.2
    return canvas, pen, rx


def _clutter(pen, rng, n, yh, rx, k, count):
    """Distractors shaped like parts of the classes, off-road or anywhere; never annotated."""
    for _ in range(count):
        kind = rng.choice(["box", "pole", "blob", "bar", "wheels"])
        t = rng.uniform(0.05, 1.0)
        y = yh + t * (n - yh)
        off = rng.choice([-1, 1]) * rng.uniform(1.15, 2.5)
        x = rx(off if kind in ("box", "pole", "wheels") else rng.uniform(-2.5, 2.5), y)
        colour = _pick(rng, CAR_COLOURS + SHIRTS)
        if kind == "box":
            w = (0.25 + 0.75 * t) * rng.uniform(20, 40) * k
            pen("rectangle", [x - w / 2, y - w * rng.uniform(.3, .6), x + w / 2, y], fill=colour)
        elif kind == "pole":
            w, h = rng.uniform(1, 3) * k, rng.uniform(10, 30) * k
            grey = _pick(rng, [(90, 90, 90), (50, 40, 30)])
            pen("rectangle", [x - w / 2, y - h, x + w / 2, y], fill=grey)
        elif kind == "blob":
            r = rng.uniform(2, 6) * k
            pen("ellipse", [x - r, y - 2 * r, x + r, y], fill=colour)
        elif kind == "bar":
            w, h = rng.uniform(10, 40) * k, rng.uniform(2, 6) * k
            pen("rectangle", [x - w / 2, y - h, x + w / 2, y], fill=colour)
        else:
            r = (0.25 + 0.75 * t) * rng.uniform(3, 6) * k
            for cx in (x - 1.3 * r, x + 1.3 * r):
                pen("ellipse", [cx - r, y - 2 * r, cx + r, y], outline=(20, 20, 20), width=.8 * k)


def _objects(rng, n, yh, rx, k, count, probs, occlusion, scale=1.0):
    """(class, [x0,y0,x1,y1]) far to near; off-image centres and, with occlusion off,
    overlapping placements are redrawn (up to 30 tries, then the object is left out)."""
    out = []
    for _ in range(count):
        cls = int(rng.choice(3, p=probs)) + 1
        for _try in range(30):
            t = rng.uniform(0.08, 1.0)
            yb, s = yh + t * (n - yh), (0.25 + 0.75 * t) * scale
            if cls == CAR:
                u, w = rng.uniform(-.8, .8), s * rng.uniform(28, 48) * k
                h = w * rng.uniform(.45, .6)
            elif cls == PED:
                u, h = rng.choice([-1, 1]) * rng.uniform(.9, 1.4), s * rng.uniform(22, 36) * k
                w = h * rng.uniform(.3, .4)
            else:
                u, h = rng.choice([-1, 1]) * rng.uniform(.5, 1.0), s * rng.uniform(20, 32) * k
                w = h * rng.uniform(.75, .95)
            cx = rx(u, yb)
            box = [cx - w / 2, yb - h, cx + w / 2, yb]
            if not 0 <= cx <= n:  # keep at least half of the object inside the image
                continue
            if occlusion or all(box[2] + 1 <= b[0] or b[2] + 1 <= box[0] or box[3] + 1 <= b[1]
                                or b[3] + 1 <= box[1] for _, b in out):  # 1 px gap: PIL rounding
                out.append((cls, box))
                break
    return sorted(out, key=lambda o: o[1][3])


def _scene(rng, n, objects, clutter, probs, occlusion, pixel_noise, object_scale=1.0):
    """One image (3,H,W) and its visible objects as (class, xyxy, occluded fraction)."""
    k = n / 128.0
    yh, vx = rng.uniform(.30, .45) * n, rng.uniform(.35, .65) * n
    hwb = rng.uniform(.55, .9) * n
    canvas, pen, rx = _background(rng, n, yh, vx, hwb, k)
    _clutter(pen, rng, n, yh, rx, k, int(rng.integers(clutter[0], clutter[1] + 1)))
    placed = _objects(rng, n, yh, rx, k, int(rng.integers(objects[0], objects[1] + 1)), probs,
                      occlusion, object_scale)
    owner, area = np.full((n * _SS, n * _SS), -1, dtype=np.int32), []
    for j, (cls, box) in enumerate(placed):
        pen.begin()
        _DRAW[cls](pen, *box, rng)
        mask = pen.end()
        owner[mask] = j
        area.append(int(mask.sum()))
    visible = np.bincount(owner[owner >= 0].ravel(), minlength=len(placed))
    img = np.asarray(canvas.resize((n, n), Image.BOX), dtype=np.float32) / 255.0
    img = img + rng.normal(0, pixel_noise, img.shape).astype(np.float32)
    objs = [(cls, box, 1.0 - visible[j] / area[j] if area[j] else 1.0)
            for j, (cls, box) in enumerate(placed)]
    return np.clip(img, 0, 1).transpose(2, 0, 1).copy(), objs


def _noisy(ann, rng, n, drop, wrong, jitter, jitter_rate):
    """Corrupt one clean annotation; returns (noise kind, written annotation or None)."""
    u = rng.random()
    if u < drop:
        return "dropped", None
    out = dict(ann)
    if u < drop + wrong:
        others = [c for c in (CAR, PED, CYC) if c != ann["category_id"]]
        out["category_id"] = int(rng.choice(others))
        return "wrong_class", out
    if jitter > 0 and u < drop + wrong + jitter_rate:
        x, y, w, h = ann["bbox"]
        d = rng.uniform(-jitter, jitter, 4) * np.array([w, h, w, h])
        x0, y0 = np.clip([x + d[0], y + d[1]], 0, n - 1)
        x1, y1 = min(max(x + w + d[2], x0 + 1), n), min(max(y + h + d[3], y0 + 1), n)
        out["bbox"] = [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)]
        out["area"] = round(out["bbox"][2] * out["bbox"][3], 2)
        return "jitter", out
    return "none", out


def generate_scenes(n_images: int, seed: int = 0, image_size: int = 128,
                    objects: tuple[int, int] = (1, 6), clutter: tuple[int, int] = (0, 4),
                    class_probs: tuple[float, float, float] = (0.5, 0.3, 0.2),
                    occlusion: bool = True, max_occluded: float = 0.8, min_box_size: float = 3.0,
                    pixel_noise: float = 0.03, wrong_class_rate: float = 0.0,
                    box_jitter: float = 0.0, jitter_rate: float | None = None,
                    drop_box_rate: float = 0.0, first_image_id: int = 1,
                    object_scale: float = 1.0) -> SceneSet:
    """Generate ``n_images`` scenes; the same arguments always give identical output.

    ``box_jitter`` moves each edge by up to that fraction of the box's width/height, on a
    ``jitter_rate`` share of boxes (default: every box not dropped or relabelled).
    ``first_image_id`` lets train and validation sets from different seeds keep distinct ids.
    ``object_scale`` multiplies every object's size (not the clutter's): on small images it keeps
    far objects above a few pixels, where a small detector can still find them.
    """
    if not object_scale > 0:
        raise ValueError(f"object_scale must be > 0, got {object_scale!r}")
    if n_images < 1 or image_size < 32:
        raise ValueError("need n_images >= 1 and image_size >= 32")
    if not (0 <= objects[0] <= objects[1] and 0 <= clutter[0] <= clutter[1]):
        raise ValueError("objects and clutter must be (min, max) ranges with 0 <= min <= max")
    rates = (wrong_class_rate, drop_box_rate, 0.0 if jitter_rate is None else jitter_rate)
    if min(rates) < 0 or sum(rates) > 1 or box_jitter < 0 or not 0 <= max_occluded <= 1:
        raise ValueError("noise rates must be >= 0 and sum to at most 1; box_jitter >= 0")
    probs = np.asarray(class_probs, dtype=float) / np.sum(class_probs)
    jrate = 1.0 - wrong_class_rate - drop_box_rate if jitter_rate is None else jitter_rate
    n, imgs, clean, noisy, images = int(image_size), [], [], [], []
    stats = {"dropped_occluded": 0, "dropped_small": 0, "none": 0, "wrong_class": 0,
             "jitter": 0, "dropped": 0}
    ann_id = 1
    for i in range(n_images):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0, i]))
        nrng = np.random.default_rng(np.random.SeedSequence([seed, 1, i]))
        img, objs = _scene(rng, n, objects, clutter, probs, occlusion, pixel_noise, object_scale)
        image_id = first_image_id + i
        imgs.append(img)
        images.append({"id": image_id, "file_name": f"{image_id:06d}.png", "width": n, "height": n})
        for cls, box, occ in objs:
            x0, y0, x1, y1 = np.clip(box, 0, n)
            if min(x1 - x0, y1 - y0) < min_box_size:
                stats["dropped_small"] += 1
                continue
            if occlusion and occ > max_occluded:
                stats["dropped_occluded"] += 1
                continue
            bbox = [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)]
            ann = {"id": ann_id, "image_id": image_id, "category_id": cls, "bbox": bbox,
                   "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0,
                   "occluded": round(float(occ), 3)}
            ann_id += 1
            kind, written = _noisy(ann, nrng, n, drop_box_rate, wrong_class_rate, box_jitter, jrate)
            stats[kind] += 1
            clean.append(dict(ann, noise=kind))
            if written is not None:
                noisy.append(dict(written, noise=kind))
    info = {"description": "KD Workbench procedural traffic scenes", "seed": seed,
            "image_size": n, "wrong_class_rate": wrong_class_rate, "box_jitter": box_jitter,
            "jitter_rate": jrate if box_jitter > 0 else 0.0, "drop_box_rate": drop_box_rate,
            "max_occluded": max_occluded}
    cats = [dict(c) for c in CATEGORIES]
    return SceneSet(images=np.stack(imgs),
                    coco={"info": dict(info, labels="noisy"), "images": images,
                          "annotations": noisy, "categories": cats},
                    coco_clean={"info": dict(info, labels="clean"),
                                "images": [dict(m) for m in images], "annotations": clean,
                                "categories": [dict(c) for c in cats]},
                    stats=stats)


def draw_boxes(image: np.ndarray, annotations: list[dict], scale: int = 3) -> Image.Image:
    """An upscaled RGB picture of a (3,H,W) image with its COCO boxes, one colour per class."""
    colours = {CAR: (255, 0, 0), PED: (0, 255, 255), CYC: (255, 0, 255)}
    arr = (np.clip(image, 0, 1).transpose(1, 2, 0) * 255).astype(np.uint8)
    pic = Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST)
    d = ImageDraw.Draw(pic)
    for a in annotations:
        x, y, w, h = (v * scale for v in a["bbox"])
        d.rectangle([x, y, x + w, y + h], outline=colours.get(a["category_id"], (255, 255, 0)))
    return pic
