"""Dataset ``ground3d`` (task ``points``): outdoor ground-plane scenes seen in two frames
(`kd_engine.data.scenes3d.make_ground_pair`), as LiDAR-like point clouds with a camera view.

Per scene (one instance), for the *current* (second) frame:

- ``x`` (scenes, points, 9): centred and scaled xyz, a normal estimated from the 16 nearest
  neighbours (PCA, oriented toward the sensor above the scene) and the three local-covariance
  shape values (`kd_engine.data.rooms3d.local_shape`). No colour: a LiDAR measures geometry,
  and the class colours of the generator would otherwise name the classes outright.
- ``y`` (scenes, points): class per point (``GROUND_CLASSES``, the ground last); ``instance``
  (object id, −1 ground) and ``moving`` (the point's object moved between the frames): ground
  truth, for evaluation and for supervised references only.
- ``previous`` (scenes, points, 3): the first frame's points (for two-frame differencing).
- ``neighbours`` (scenes, points, 16): kNN indices, computed once.
- the camera's view of the current frame: ``images`` (scenes, 1, H, W, 3), ``pixel`` (scenes, 1,
  points, 2) and ``visible`` (scenes, 1, points) (z-buffer tested), the layout of ``rooms3d``.

Every frame has exactly ``points`` points: all object points (``points_per_object`` each) and
ground points drawn uniformly to fill the rest. Scene i of split seed s is
``make_ground_pair(1000·s + i)``; the first ``scenes − test_scenes`` train, the rest test; there
is no validation split (nothing is selected; the last epoch is reported).
"""
from __future__ import annotations

import numpy as np
from annotated_types import Ge, Interval

from kd_engine.data.base import DataBundle, cfg_get
from kd_engine.data.registry import DATASETS
from kd_engine.data.rooms3d import local_shape, scene_splits
from kd_engine.data.scenes3d import GROUND, GROUND_CLASSES, make_ground_pair
from kd_engine.errors import ConfigError
from kd_engine.params import Param, read_params

PARAMS = {"scenes": Param(400, Ge(2)), "test_scenes": Param(100, Ge(1)), "points": Param(320, Ge(16)),
          "points_per_object": Param(48, Ge(4)), "image_size": Param(32, Ge(8)),
          "render_points": Param(8000, Ge(100)), "move_probability": Param(0.4, Interval(ge=0, le=1))}
FEATURES = ("x", "y", "z", "nx", "ny", "nz", "linearity", "planarity", "scattering")
SENSOR = np.array([0.0, 0.0, 2.0])  # the normals face a LiDAR above the scene's centre
MAX_OBJECTS = 5


def _fixed(frame, count: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices of ``count`` points of a frame: every object point, ground points to fill."""
    objects = np.flatnonzero(frame.label != GROUND)
    ground = np.flatnonzero(frame.label == GROUND)
    fill = rng.choice(ground, count - len(objects), replace=False)
    return np.sort(np.concatenate([objects, fill]))


def scene_arrays(seed: int, p: dict) -> dict[str, np.ndarray]:
    """Everything the dataset holds for one two-frame scene."""
    pair = make_ground_pair(seed, points_per_object=p["points_per_object"], ground_points=p["points"],
                            size=p["image_size"], move_probability=p["move_probability"],
                            render_points=p["render_points"])
    rng = np.random.default_rng(seed)
    previous, current = pair.frames
    keep, before = _fixed(current, p["points"], rng), _fixed(previous, p["points"], rng)
    xyz = current.xyz[keep].astype(np.float64)
    index, normal, shape = local_shape(xyz, SENSOR)
    x = np.concatenate([xyz / 3.0, normal, shape], 1)  # the ground spans [−3, 3]²
    view = current.views[0]
    return {"x": x.astype(np.float32), "y": current.label[keep], "xyz": current.xyz[keep],
            "previous": previous.xyz[before], "instance": current.instance[keep],
            "moving": np.asarray(current.moving, dtype=bool)[keep], "neighbours": index,
            "images": view.image[None], "pixel": view.pixel[keep][None], "visible": view.visible[keep][None]}


@DATASETS.register("ground3d")
def ground3d(data_cfg, seed: int) -> DataBundle:
    p = read_params(cfg_get(data_cfg, "params", {}) or {}, PARAMS, "data.params", "dataset ground3d")
    if p["points"] < MAX_OBJECTS * p["points_per_object"] + 16:
        raise ConfigError(f"data.params.points: must be at least {MAX_OBJECTS * p['points_per_object'] + 16} "
                          f"({MAX_OBJECTS} objects × data.params.points_per_object + 16 ground points), "
                          f"got {p['points']}")
    train, val, test = scene_splits(scene_arrays, seed, p)
    return DataBundle(train=train, val=val, test=test, num_classes=len(GROUND_CLASSES),
                      input_shape=(p["points"], len(FEATURES)), class_names=list(GROUND_CLASSES), name="ground3d",
                      meta={"features": list(FEATURES), "params": p})


ground3d.task = "points"
