"""Known answers of the projected cosine distillation loss (UP-VL) and its pixel gatherer."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kd_engine.losses.projected import gather_pixels, in_image, projected_cosine_kd


def _map() -> torch.Tensor:
    # one scene, D = 2, H = 2 rows, W = 3 columns; channel values chosen so every pixel differs
    return torch.tensor([[[[1.0, 0.0, 3.0], [0.0, 1.0, -2.0]],
                          [[1.0, -1.0, 4.0], [2.0, 0.0, 5.0]]]])


def test_gather_reads_row_v_column_u():
    maps = _map()
    pixels = torch.tensor([[[0, 0], [2, 0], [1, 1], [2, 1]]])
    got = gather_pixels(maps, pixels)[0].numpy()
    expected = np.array([[1.0, 1.0], [3.0, 4.0], [1.0, 0.0], [-2.0, 5.0]])
    np.testing.assert_allclose(got, expected)


def test_in_image_bounds():
    pixels = torch.tensor([[0, 0], [2, 1], [3, 0], [0, 2], [-1, 0]])
    assert in_image(pixels, height=2, width=3).tolist() == [True, True, False, False, False]


def test_identical_features_give_zero_and_orthogonal_give_one():
    maps = _map()
    pixels = torch.tensor([[[0, 0], [2, 0], [2, 1]]])
    visible = torch.ones(1, 3, dtype=torch.bool)
    same = gather_pixels(maps, pixels)
    assert projected_cosine_kd(same * 3.0, maps, pixels, visible, reduction="none").item() == pytest.approx(0.0, abs=1e-6)
    orthogonal = torch.stack([-same[..., 1], same[..., 0]], dim=-1)  # rotate every target by 90°
    assert projected_cosine_kd(orthogonal, maps, pixels, visible, reduction="none").item() == pytest.approx(1.0, abs=1e-6)


def test_hand_computed_case_with_masked_points():
    maps = _map()
    # p0 -> pixel (0,0) target (1,1), feature (1,0): 1 - 1/sqrt2
    # p1 -> pixel (1,0) target (0,-1), feature (0,1): 2 (opposite)
    # p2 -> pixel (2,1) target (-2,5): occluded (visible False), ignored
    # p3 -> pixel (5,0): outside the 3-wide image although flagged visible, ignored
    pixels = torch.tensor([[[0, 0], [1, 0], [2, 1], [5, 0]]])
    features = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [7.0, 7.0], [1.0, 2.0]]])
    visible = torch.tensor([[True, True, False, True]])
    expected = ((1 - 1 / math.sqrt(2)) + 2.0) / 2
    got = projected_cosine_kd(features, maps, pixels, visible, reduction="none")
    assert got.shape == (1,) and got.item() == pytest.approx(expected, abs=1e-6)
    # changing a masked point's feature changes nothing
    features2 = features.clone()
    features2[0, 2] = torch.tensor([-3.0, 1.0])
    features2[0, 3] = torch.tensor([5.0, -9.0])
    assert projected_cosine_kd(features2, maps, pixels, visible, reduction="none").item() == pytest.approx(expected, abs=1e-6)


def test_per_scene_reduction_and_empty_scene():
    maps = _map().repeat(2, 1, 1, 1)
    pixels = torch.tensor([[[0, 0], [1, 0]], [[0, 0], [1, 0]]])
    features = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 1.0]]])
    visible = torch.tensor([[True, True], [False, False]])
    none = projected_cosine_kd(features, maps, pixels, visible, reduction="none")
    first = ((1 - 1 / math.sqrt(2)) + 2.0) / 2
    assert none.tolist() == pytest.approx([first, 0.0], abs=1e-6)
    assert projected_cosine_kd(features, maps, pixels, visible, reduction="mean").item() == pytest.approx(first / 2, abs=1e-6)
    assert projected_cosine_kd(features, maps, pixels, visible, reduction="sum").item() == pytest.approx(first, abs=1e-6)


def test_teacher_gets_no_gradient_and_shapes_are_checked():
    maps = _map().requires_grad_(True)
    pixels = torch.tensor([[[0, 0], [1, 1]]])
    features = torch.randn(1, 2, 2, requires_grad=True)
    projected_cosine_kd(features, maps, pixels, torch.ones(1, 2, dtype=torch.bool)).backward()
    assert maps.grad is None and features.grad is not None
    with pytest.raises(ValueError, match="point_features"):
        projected_cosine_kd(torch.randn(1, 2, 3), _map(), pixels, torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="reduction"):
        projected_cosine_kd(features, _map(), pixels, torch.ones(1, 2, dtype=torch.bool), reduction="avg")
