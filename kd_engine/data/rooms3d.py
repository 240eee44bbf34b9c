"""Dataset ``rooms3d`` (task ``points``): synthetic rooms (`kd_engine.data.scenes3d.make_room`) as
point clouds with per-point input features, neighbours, super-voxels and the rendered views.

Per scene (one instance; ``x`` is (scenes, points, 12)):

- input features: centred and scaled xyz, the noisy rgb, a normal estimated from the 16 nearest
  neighbours (PCA, oriented toward a point above the room's centre) and three local-covariance
  shape values (linearity, planarity, scattering of the neighbourhood's eigenvalues). The true
  normals are not given to the network: a sensor does not measure them.
- ``neighbours`` (scenes, points, 16): kNN indices, computed once (the network's context layers
  read them; searching them every step costs more than the network).
- ``supervoxel`` (scenes, points): k-means clusters of (xyz, 0.3·normal), about ``supervoxels``
  per scene; a stand-in for VCCS super-voxels (groups of nearby points on one smooth surface).
- the views of `make_room`: ``images`` (scenes, views, H, W, 3), ``pixel`` (scenes, views, points,
  2) and ``visible`` (scenes, views, points).

Scene i of split seed s is ``make_room(1000·s + i)``; the first ``scenes − test_scenes`` train,
the rest test; there is no validation split (nothing is selected; the last epoch is reported).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from annotated_types import Ge, Interval
import torch
from scipy.spatial import cKDTree
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from kd_engine.data.base import DataBundle, TensorInstanceDataset, cfg_get
from kd_engine.data.registry import DATASETS
from kd_engine.data.scenes3d import ROOM_CLASSES, make_room
from kd_engine.errors import ConfigError
from kd_engine.params import Param, read_params

PARAMS = {"scenes": Param(16, Ge(2)), "test_scenes": Param(4, Ge(1)), "points": Param(1536, Ge(16)),
          "views": Param(4, Interval(ge=1, le=4)), "image_size": Param(48, Ge(8)),
          "render_points": Param(16000, Ge(100)), "supervoxels": Param(150, Ge(1)),
          "colour_noise": Param(0.06, Ge(0.0))}
NEIGHBOURS = 16
FEATURES = ("x", "y", "z", "r", "g", "b", "nx", "ny", "nz", "linearity", "planarity", "scattering")


class PointSceneDataset(TensorInstanceDataset):
    """Scenes as rows: ``x`` (S, N, F) input features, ``y`` (S, N) classes, and per scene the
    arrays listed in the module docstring (numpy, except ``neighbours``, a tensor)."""

    def __init__(self, x, y, ids, **arrays):
        super().__init__(x, y, ids)
        self.neighbours = torch.as_tensor(arrays.pop("neighbours"), dtype=torch.int64)
        for name, value in arrays.items():
            setattr(self, name, value)


def local_shape(xyz: np.ndarray, viewpoint: np.ndarray, k: int = NEIGHBOURS):
    """(neighbours (N, k), normal (N, 3), shape (N, 3)) from the k nearest points: the PCA normal
    (smallest-eigenvalue direction, turned toward ``viewpoint``) and linearity, planarity and
    scattering, (λ1−λ2)/λ1, (λ2−λ3)/λ1, λ3/λ1 of the neighbourhood covariance (λ1 ≥ λ2 ≥ λ3)."""
    _, index = cKDTree(xyz).query(xyz, k=k)
    local = xyz[index] - xyz[index].mean(1, keepdims=True)
    cov = np.einsum("nki,nkj->nij", local, local) / k
    values, vectors = np.linalg.eigh(cov)  # ascending
    normal = vectors[:, :, 0]
    normal *= np.sign(np.einsum("ni,ni->n", normal, viewpoint - xyz) + 1e-12)[:, None]
    l3, l2, l1 = values[:, 0], values[:, 1], np.maximum(values[:, 2], 1e-12)
    shape = np.stack([(l1 - l2) / l1, (l2 - l3) / l1, l3 / l1], 1)
    return index, normal, shape


def scene_arrays(seed: int, p: dict) -> dict[str, np.ndarray]:
    """Everything `PointSceneDataset` holds for one room."""
    scene = make_room(seed, points=p["points"], size=p["image_size"], views=p["views"],
                      render_points=p["render_points"], colour_noise=p["colour_noise"])
    xyz = scene.xyz.astype(np.float64)
    centre, half = np.array([1.5, 1.5, 0.75]), 1.5
    index, normal, shape = local_shape(xyz, np.array([1.5, 1.5, 1.5]))
    x = np.concatenate([(xyz - centre) / half, scene.rgb, normal, shape], 1)
    count = min(p["supervoxels"], len(xyz))
    with threadpool_limits(1):  # tiny problems: threads only add overhead on a shared CPU
        supervoxel = KMeans(count, n_init=1, random_state=seed).fit_predict(np.concatenate([xyz, 0.3 * normal], 1))
    return {"x": x.astype(np.float32), "y": scene.label, "xyz": scene.xyz, "rgb": scene.rgb,
            "instance": scene.instance, "neighbours": index, "supervoxel": supervoxel.astype(np.int64),
            "images": np.stack([v.image for v in scene.views]), "pixel": np.stack([v.pixel for v in scene.views]),
            "visible": np.stack([v.visible for v in scene.views])}


@lru_cache(maxsize=8)
def _scenes(make, split_seed: int, key: tuple) -> dict[str, np.ndarray]:
    p = dict(key)
    rows = [make(1000 * split_seed + i, p) for i in range(p["scenes"])]
    return {name: np.stack([r[name] for r in rows]) for name in rows[0]}


def _split(arrays: dict, rows: np.ndarray) -> PointSceneDataset:
    picked = {k: v[rows] for k, v in arrays.items()}
    return PointSceneDataset(picked.pop("x"), picked.pop("y"), torch.as_tensor(rows), **picked)


def scene_splits(make, split_seed: int, p: dict) -> tuple[PointSceneDataset, PointSceneDataset, PointSceneDataset]:
    """Train, (empty) val and test splits of the scenes ``make(1000·split_seed + i, p)``, built once
    per setting: the first ``scenes − test_scenes`` train, the rest test (ids are the scene index)."""
    if not 1 <= p["test_scenes"] < p["scenes"]:
        raise ConfigError(f"data.params.test_scenes: must be in 1..{p['scenes'] - 1} (data.params.scenes - 1), "
                          f"got {p['test_scenes']!r}")
    arrays = _scenes(make, int(split_seed), tuple(sorted(p.items())))
    train_rows = np.arange(p["scenes"] - p["test_scenes"])
    return (_split(arrays, train_rows), _split(arrays, train_rows[:0]),
            _split(arrays, np.arange(p["scenes"] - p["test_scenes"], p["scenes"])))


@DATASETS.register("rooms3d")
def rooms3d(data_cfg, seed: int) -> DataBundle:
    p = read_params(cfg_get(data_cfg, "params", {}) or {}, PARAMS, "data.params", "dataset rooms3d")
    if p["supervoxels"] > p["points"]:
        raise ConfigError(f"data.params.supervoxels: must be at most data.params.points ({p['points']}), "
                          f"got {p['supervoxels']}")
    train, val, test = scene_splits(scene_arrays, seed, p)
    return DataBundle(train=train, val=val, test=test, num_classes=len(ROOM_CLASSES),
                      input_shape=(p["points"], len(FEATURES)), class_names=list(ROOM_CLASSES), name="rooms3d",
                      meta={"features": list(FEATURES), "params": p})


rooms3d.task = "points"
