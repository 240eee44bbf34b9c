"""What UP-VL builds from the two-frame ground scenes before training (a reconstruction; the
paper publishes no code): the 2-D teacher's training images and, per training scene, the
auto-labels its student learns.

The teacher never sees a multi-object scene in training: its images are single objects on the
ground, from generator seeds of their own (``OBJECT_SEED_BASE`` + i), so no scene of any split
is among them.

Auto-labels (`kd_engine.parts.autolabel`) per scene, one of three sources (``labels``):

- ``motion``: moving DBSCAN segments only (the class-agnostic baseline);
- ``motion_vl``: moving segments, plus static segments that the 2-D teacher calls an object: the
  mean over their visible points of max_{c seen} cos(F_2D(u, v), t_c) − cos(F_2D(u, v), t_bg)
  (class prompt against the "background" prompt) is at least ``vl_threshold``;
- ``truth``: every true object (the supervised upper bound; its class labels come separately).

The held-out class is never among the "seen" classes: it cannot make a static auto-label by its
own name, and the upper bound gets no class label for it.
"""
from __future__ import annotations

import numpy as np
import torch

from kd_engine.data.scenes3d import GROUND, make_ground_pair
from kd_engine.losses.projected import gather_pixels
from kd_engine.parts.autolabel import MOVING, STATIC, auto_label, cosine_to_classes
from kd_engine.parts.vl_teacher import DenseVLNet, cached_feature_maps

OBJECT_SEED_BASE = 7_000_000
LABEL_SOURCES = ("motion", "motion_vl", "truth")


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


def scene_images(dataset) -> torch.Tensor:
    """(S, 3, H, W) current-frame renders of a ``ground3d`` split."""
    return torch.from_numpy(np.ascontiguousarray(dataset.images[:, 0].transpose(0, 3, 1, 2))).float()


def point_teacher_features(maps: torch.Tensor, dataset) -> torch.Tensor:
    """(S, N, D) teacher feature at each point's pixel (zero where the point is not visible)."""
    feats = gather_pixels(maps, torch.as_tensor(dataset.pixel[:, 0]))
    return feats * torch.as_tensor(dataset.visible[:, 0])[..., None].float()


def scene_tables(splits: dict, vl: DenseVLNet, teacher_path: str, identity: dict, cache_dir) -> dict[str, torch.Tensor]:
    """Tables indexed by scene id over ``splits`` (name -> ``ground3d`` split): the teacher's maps
    (computed once per split and cached), each point's teacher feature (zero where hidden), its
    visibility and its pixel."""
    count = 1 + max(int(split.ids.max()) for split in splits.values() if len(split))
    first = next(split for split in splits.values() if len(split))
    points, size, dim = first.x.shape[1], first.images.shape[2], vl.class_embeddings.shape[1]
    out = {"maps": torch.zeros(count, dim, size, size), "teacher_feats": torch.zeros(count, points, dim),
           "teacher_valid": torch.zeros(count, points, dtype=torch.bool),
           "pixel": torch.zeros(count, points, 2, dtype=torch.long)}
    for name, split in splits.items():
        if not len(split):
            continue
        maps = cached_feature_maps(vl, scene_images(split), teacher_path, {**identity, "split": name}, cache_dir)
        out["maps"][split.ids], out["teacher_feats"][split.ids] = maps, point_teacher_features(maps, split)
        out["teacher_valid"][split.ids] = torch.as_tensor(split.visible[:, 0])
        out["pixel"][split.ids] = torch.as_tensor(split.pixel[:, 0])
    return out


def object_margin(point_feats: np.ndarray, embeddings: np.ndarray, background: np.ndarray,
                  seen: list[int]) -> np.ndarray:
    """(N,) max_{c in seen} cos(F, t_c) − cos(F, t_bg) per point."""
    cos = cosine_to_classes(point_feats, np.concatenate([background, embeddings[seen]]))
    return cos[:, 1:].max(1) - cos[:, 0]


def label_scenes(dataset, point_feats: torch.Tensor, embeddings: np.ndarray, background: np.ndarray,
                 p: dict) -> dict[str, np.ndarray]:
    """Per training scene: ``cluster`` (S, N) auto-label id per point (−1 none), ``objectness``
    (S, N) targets, ``target_class`` (S, N) class labels of seen classes (−1 elsewhere; only for
    ``truth``), and the counts ``moving_labels``, ``static_labels`` (S,)."""
    seen = [c for c in range(len(embeddings)) if c != p["held_out"]]
    s, n = dataset.y.shape
    out = {"cluster": np.full((s, n), -1, np.int64), "target_class": np.full((s, n), -1, np.int64),
           "moving_labels": np.zeros(s), "static_labels": np.zeros(s)}
    y = dataset.y.numpy()
    for i in range(s):
        if p["labels"] == "truth":
            out["cluster"][i] = dataset.instance[i]
            out["target_class"][i] = np.where((y[i] != GROUND) & (y[i] != p["held_out"]), y[i], -1)
            moved = {int(k): bool(dataset.moving[i][dataset.instance[i] == k][0]) for k in np.unique(dataset.instance[i])
                     if k >= 0}
            out["moving_labels"][i], out["static_labels"][i] = sum(moved.values()), len(moved) - sum(moved.values())
            continue
        xyz, visible = dataset.xyz[i], dataset.visible[i, 0]
        margin = object_margin(point_feats[i].numpy(), embeddings, background, seen)
        labels = auto_label(xyz, dataset.previous[i], xyz[:, 2] > p["ground_height"], margin, visible,
                            eps=p["eps"], min_samples=p["min_samples"], motion_threshold=p["motion_threshold"],
                            motion_fraction=p["motion_fraction"],
                            vl_threshold=p["vl_threshold"] if p["labels"] == "motion_vl" else None)
        out["cluster"][i] = labels.cluster
        out["moving_labels"][i], out["static_labels"][i] = labels.count(MOVING), labels.count(STATIC)
    out["objectness"] = (out["cluster"] >= 0).astype(np.float32)
    return out
