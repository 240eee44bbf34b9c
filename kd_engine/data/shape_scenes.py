"""Shape scenes with inaccurate boxes (task ``box_refine``): grey canvases holding 1 to
``max_objects`` filled shapes (rectangle, ellipse, triangle), each with its true box and a noisy
copy of it, the annotation a box-refinement method is given.

Why a generator: to measure how much a method repairs noisy boxes one needs the true boxes,
which real datasets with inaccurate annotations do not have. Here the generator knows them.

* A shape fills its box exactly: a rectangle the box, an ellipse the inscribed ellipse, a
  triangle the base on one horizontal edge and the apex at the middle of the other, so the
  tight box of its pixels is the true box (boxes have integer corners; a test checks this). Sides are uniform in
  [``min_side``, ``max_side``] px; a new shape overlaps an earlier one by IoU < 0.3. Shapes have a
  brightness in [0.5, 1] on a black canvas with Gaussian pixel noise ``pixel_noise``.
* **Box noise** (`noisy_boxes`): each edge moves by U(−ρ, ρ) × the box's width (x0, x1) or
  height (y0, y1), independently per edge and per object (ρ = ``rho``), then the box is clipped
  to the canvas and kept at least 1 px wide. The noise has mean zero per edge, so the average
  annotation of similar-looking objects is their true box: that is what a regressor trained
  on noisy boxes can recover.

Every split (train, val, test) is drawn from one stream fixed by the split seed; the noisy
boxes of val and test scenes are drawn the same way, so a refiner can be judged on scenes it
never trained on as well as on its own training annotations. Instance ids are the scene index
(images); object ids are ``image_id * OBJECT_STRIDE + k``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from annotated_types import Ge, Interval
from torchvision.ops import box_iou

from kd_engine.data.base import DataBundle, TensorInstanceDataset, cfg_get
from kd_engine.data.registry import DATASETS
from kd_engine.errors import ConfigError
from kd_engine.params import Param, read_params

SHAPES = ("rectangle", "ellipse", "triangle")
OBJECT_STRIDE = 4  # object id = image id * OBJECT_STRIDE + index within the image
PARAMS = {"rho": Param(0.2, Interval(ge=0.0, le=0.5)), "n_train": Param(1500, Ge(1)), "n_val": Param(150, Ge(0)),
          "n_test": Param(300, Ge(1)), "min_side": Param(6, Ge(2)), "max_side": Param(16, Ge(2)),
          "max_objects": Param(3, Interval(ge=1, le=OBJECT_STRIDE - 1)),
          "pixel_noise": Param(0.1, Interval(ge=0.0, le=1.0))}


def draw_shape(canvas: np.ndarray, kind: int, box: np.ndarray, value: float) -> None:
    """Fill shape ``kind`` (index into SHAPES) inside ``box`` (x0, y0, x1, y1, pixel edges) on
    ``canvas`` (H, W), testing each pixel's centre; a triangle points up or down by the box's
    position parity (both orientations occur)."""
    h, w = canvas.shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    x0, y0, x1, y1 = box
    inside = (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)
    if kind == 1:
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        inside &= ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    elif kind == 2:
        up = int(x0 + y0) % 2 == 0
        # the triangle's width at the pixel row's edge nearer the base (0 at the apex, 1 at the
        # base), plus half a pixel: a pixel the triangle touches is filled, so the apex row shows
        depth = np.minimum((yy + 0.5 - y0) if up else (y1 - yy + 0.5), y1 - y0) / (y1 - y0)
        inside &= np.abs(xx - (x0 + x1) / 2) <= depth * (x1 - x0) / 2 + 0.5
    canvas[inside] = value


def make_scenes(count: int, rng: np.random.Generator, size: int = 32, min_side: int = 6, max_side: int = 16,
                max_objects: int = 3, pixel_noise: float = 0.1) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """``count`` scenes: images (count, size, size) in [0, 1], and per scene its true boxes
    (k, 4) float32 and labels (k,) int64."""
    images, boxes, labels = np.zeros((count, size, size), np.float32), [], []
    for i in range(count):
        placed: list[np.ndarray] = []
        kinds: list[int] = []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            for _attempt in range(20):
                w, h = rng.integers(min_side, max_side + 1, size=2)
                x0, y0 = rng.integers(0, size - w + 1), rng.integers(0, size - h + 1)
                box = np.array([x0, y0, x0 + w, y0 + h], np.float32)
                if not placed or box_iou(torch.from_numpy(box[None]), torch.from_numpy(np.stack(placed))).max() < 0.3:
                    kind = int(rng.integers(len(SHAPES)))
                    draw_shape(images[i], kind, box, float(rng.uniform(0.5, 1.0)))
                    placed.append(box)
                    kinds.append(kind)
                    break
        boxes.append(np.stack(placed))
        labels.append(np.asarray(kinds, np.int64))
    images += rng.normal(0.0, pixel_noise, images.shape).astype(np.float32)
    return np.clip(images, 0.0, 1.0), boxes, labels


def noisy_boxes(boxes: np.ndarray, rho: float, rng: np.random.Generator, size: int) -> np.ndarray:
    """The box-noise injector: each edge of each (x0, y0, x1, y1) box moves by U(−ρ, ρ) times
    the box's width (x edges) or height (y edges); the result is clipped to [0, size] and kept
    at least 1 px wide and high."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    wh = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
    out = np.clip(boxes + rng.uniform(-rho, rho, boxes.shape).astype(np.float32) * wh, 0.0, float(size))
    for lo, hi in ((0, 2), (1, 3)):
        centre = (out[:, lo] + out[:, hi]) / 2
        thin = out[:, hi] - out[:, lo] < 1.0
        out[thin, lo] = np.clip(centre[thin] - 0.5, 0.0, size - 1.0)
        out[thin, hi] = out[thin, lo] + 1.0
    return out


class BoxSceneDataset(TensorInstanceDataset):
    """Scene images (``x``: (N, 1, S, S), ``y``: object count, ``ids``: scene ids) and their
    objects, one row each: ``obj_image`` (position of its scene in this split), ``obj_ids``,
    ``obj_labels`` (index into SHAPES), ``true_boxes`` and ``noisy_boxes`` (M, 4)."""

    def __init__(self, images: np.ndarray, ids: np.ndarray, boxes: list[np.ndarray], labels: list[np.ndarray],
                 noisy: list[np.ndarray]):
        counts = np.asarray([len(b) for b in boxes], np.int64)
        super().__init__(torch.from_numpy(images[:, None].copy()), torch.from_numpy(counts),
                         torch.from_numpy(np.asarray(ids, np.int64)), images=images)
        self.obj_image = torch.from_numpy(np.repeat(np.arange(len(boxes)), counts))
        within = np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, np.int64)
        self.obj_ids = self.ids[self.obj_image] * OBJECT_STRIDE + torch.from_numpy(within)
        self.obj_labels = torch.from_numpy(np.concatenate([np.zeros(0, np.int64), *labels]))
        self.true_boxes = torch.from_numpy(np.concatenate([np.zeros((0, 4), np.float32), *boxes]))
        self.noisy_boxes = torch.from_numpy(np.concatenate([np.zeros((0, 4), np.float32), *noisy]))
        self._first = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]))

    def objects_of(self, positions: torch.Tensor) -> torch.Tensor:
        """Rows of the objects whose scenes are at ``positions`` (in the order of positions)."""
        return torch.cat([torch.arange(int(self._first[p]), int(self._first[p + 1])) for p in positions])


@DATASETS.register("shape_scenes")
def build_shape_scenes(data_cfg: Any, seed: int) -> DataBundle:
    size = int(cfg_get(data_cfg, "image_size", None) or 32)
    p = read_params(dict(cfg_get(data_cfg, "params", {}) or {}), PARAMS, "data.params", "dataset shape_scenes")
    if p["min_side"] > p["max_side"] or p["max_side"] > size:
        raise ConfigError(f"data.params: need min_side ≤ max_side ≤ image_size ({size}), got min_side "
                          f"{p['min_side']}, max_side {p['max_side']}")
    rng = np.random.default_rng(seed)
    counts = (p["n_train"], p["n_val"], p["n_test"])
    images, boxes, labels = make_scenes(sum(counts), rng, size, p["min_side"], p["max_side"], p["max_objects"],
                                        p["pixel_noise"])
    noisy = [noisy_boxes(b, p["rho"], rng, size) for b in boxes]
    edges = np.cumsum((0,) + counts)
    splits = [BoxSceneDataset(images[a:b], np.arange(a, b), boxes[a:b], labels[a:b], noisy[a:b])
              for a, b in zip(edges[:-1], edges[1:])]
    return DataBundle(train=splits[0], val=splits[1], test=splits[2], num_classes=len(SHAPES),
                      input_shape=(1, size, size), class_names=list(SHAPES), name="shape_scenes",
                      meta={"split_seed": seed, "image_size": size, **p})


build_shape_scenes.task = "box_refine"
