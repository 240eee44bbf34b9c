"""What UP-VL reads from the two-frame ground scenes (`kd_engine.data.scenes3d.make_ground_pair`):
the 2-D teacher's training images (single objects, rendered alone) and, per scene, the arrays
the auto-labeller, the distillation loss and the evaluation need.

The teacher never sees a multi-object scene in training, and its images come from generator
seeds of their own (``OBJECT_SEED_BASE`` + i), so no scene of any split is among them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kd_engine.data.scenes3d import GROUND, GroundPair, make_ground_pair

OBJECT_SEED_BASE = 7_000_000


def pixel_classes(labels: np.ndarray) -> np.ndarray:
    """Render labels (class per pixel, −1 nothing, GROUND the ground) -> teacher targets:
    0 for "no object" (nothing or ground), 1 + c for object class c."""
    return np.where((labels >= 0) & (labels != GROUND), labels + 1, 0)


def object_renders(count: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` renders of one object of a random class on the ground: images (N, 3, H, W) in
    [0, 1] and pixel targets (N, H, W) as in `pixel_classes`."""
    images, labels = [], []
    for i in range(count):
        view = make_ground_pair(OBJECT_SEED_BASE + i, objects=(1, 1), ground_points=64, size=size,
                                move_probability=0.0).frames[1].views[0]
        images.append(view.image.transpose(2, 0, 1))
        labels.append(pixel_classes(view.labels))
    return torch.from_numpy(np.stack(images)).float(), torch.from_numpy(np.stack(labels)).long()


@dataclass
class SceneArrays:
    """One scene as UP-VL sees it: the current frame's points and the previous frame's (for
    differencing), the current camera view (pixel and z-buffer visibility per point, the render)
    and the ground truth used only for upper-bound labels and evaluation."""

    xyz: np.ndarray  # (N, 3) current frame
    normal: np.ndarray  # (N, 3) surface normal (a LiDAR pipeline estimates it from neighbours)
    previous: np.ndarray  # (M, 3) previous frame
    pixel: np.ndarray  # (N, 2) int (col, row), −1 outside
    visible: np.ndarray  # (N,) bool
    image: np.ndarray  # (3, H, W)
    label: np.ndarray  # (N,) class, GROUND for the ground
    instance: np.ndarray  # (N,) object id, −1 for the ground
    moving: np.ndarray  # (N,) bool: the point's object moved between the frames


def scene_arrays(pair: GroundPair) -> SceneArrays:
    previous, current = pair.frames
    view = current.views[0]
    return SceneArrays(current.xyz, current.normal, previous.xyz, view.pixel, view.visible, view.image.transpose(2, 0, 1),
                       current.label, current.instance, np.asarray(current.moving, dtype=bool))
