"""The dual-modality BEV views: the LiDAR view is the exact footprint, the camera view spreads a
cell only along its own ray (with its peak at the true range), dropout and noise do what they
say, and scenes are seeded, apart and sized by class."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage

import torch

from kd_engine.data.bev_boxes import box_cells, metric_to_cells
from kd_engine.data.bev_dual import (SIZES, build_bev_dual, camera_view, depth_smear, lidar_view, polar_coordinates,
                                     sample_scene)
from kd_engine.errors import ConfigError


def test_lidar_view_is_exact_occupancy_and_height():
    boxes = np.array([[8.0, 8.0, 4.0, 2.0, 0.0], [20.0, 20.0, 6.0, 3.0, math.pi / 4]], np.float32)
    view = lidar_view(boxes, np.array([0.4, 0.9]), 32, np.random.default_rng(0), dropout=0.0)
    cells = box_cells(boxes, 32, 32).numpy()
    assert (view[0] == cells.any(0)).all()
    assert np.allclose(view[1][cells[0]], 0.4) and np.allclose(view[1][cells[1]], 0.9)
    dropped = lidar_view(boxes, np.array([0.4, 0.9]), 32, np.random.default_rng(0), dropout=0.5)
    assert 0.3 < 1 - dropped[0][cells.any(0)].mean() < 0.7


def test_camera_spreads_a_cell_only_along_its_ray_and_peaks_at_its_range():
    occupancy = np.zeros((32, 32), np.float32)
    occupancy[4, 27] = 1.0  # centre (27.5, 4.5): 11.5 right, 11.5 up of the sensor at (16, 16)
    smeared = depth_smear(occupancy, azimuth_bins=128)
    rng_, az = polar_coordinates(32)
    same_ray = np.minimum((az / (2 * np.pi) * 128).astype(int), 127) == int(az[4, 27] / (2 * np.pi) * 128)
    assert smeared[~same_ray].sum() == 0
    assert smeared[4, 27] == pytest.approx(1.0) and smeared.max() == pytest.approx(1.0)
    lit = smeared > 0.05
    assert lit.sum() > 3  # a radial streak, not a point
    assert (rng_[lit] - rng_[4, 27]).min() < -1 and (rng_[lit] - rng_[4, 27]).max() > 1


def test_camera_column_dropout_and_noise():
    occupancy = np.zeros((32, 32), np.float32)
    occupancy[8:12, 8:12] = 1
    rng = np.random.default_rng(0)
    assert np.allclose(camera_view(occupancy, rng, column_dropout=0.0, noise=0.0)[0], depth_smear(occupancy))
    assert not camera_view(occupancy, rng, column_dropout=1.0, noise=0.0).any()
    noisy = camera_view(np.zeros((32, 32), np.float32), rng, noise=0.1)
    assert noisy.std() == pytest.approx(0.1, rel=0.1)


def test_scenes_are_seeded_apart_and_sized_by_class():
    a, b = sample_scene(np.random.default_rng(3)), sample_scene(np.random.default_rng(3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    for seed in range(20):
        boxes, labels, _ = sample_scene(np.random.default_rng(seed))
        assert 1 <= len(boxes) <= 6
        cells = box_cells(boxes, 32, 32).numpy()
        for i in range(len(boxes)):
            (lo, hi), width = SIZES[int(labels[i])]
            assert lo <= boxes[i, 2] <= hi and boxes[i, 3] == width
            others = cells[np.arange(len(boxes)) != i].any(0)
            assert not (ndimage.binary_dilation(cells[i]) & others).any()


def test_bev_dual_bundle_stacks_both_views_of_the_true_boxes():
    data = build_bev_dual(SimpleNamespace(params={"n_train": 6, "n_test": 3, "lidar_dropout": 0.0}), seed=0)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 2 and data.class_names == ["small", "large"]
    assert data.meta["output_cell"] == 1.0 and data.train.heatmap.shape == (6, 2, 16, 16)
    for x, boxes in zip(data.train.x, data.train.boxes):
        cells = box_cells(metric_to_cells(boxes, 0.5, 32), 32, 32).numpy().any(0)
        assert np.array_equal(x[0].numpy() > 0, cells)  # LiDAR occupancy = the footprints
        assert set(boxes[:, 0].tolist()) <= {0.0, 1.0}
    again = build_bev_dual(SimpleNamespace(params={"n_train": 6, "n_test": 3, "lidar_dropout": 0.0}), seed=0)
    assert torch.equal(again.test.x, data.test.x)
    other = build_bev_dual(SimpleNamespace(params={"n_train": 6, "n_test": 3, "lidar_dropout": 0.0}), seed=1)
    assert not torch.equal(other.test.x, data.test.x)


@pytest.mark.parametrize("params, message", [
    ({"column_dropout": 1.5}, "data.params.column_dropout: must be a number in [0, 1], got 1.5"),
    ({"colour": 1}, "data.params: unknown parameter 'colour'"),
    ({"min_boxes": 5, "max_boxes": 2}, "data.params.min_boxes: must be <= max_boxes 2, got 5")])
def test_bev_dual_rejects_bad_params_in_one_line(params, message):
    with pytest.raises(ConfigError) as err:
        build_bev_dual(SimpleNamespace(params=params), seed=0)
    assert message in str(err.value) and "\n" not in str(err.value)
