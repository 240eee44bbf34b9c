"""BEV scenes, the centre-distance AP (known answers computed by hand) and heatmap decoding."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kd_engine.bev_metrics import centre_distance_ap, decode, match_counts
from kd_engine.data.bev import PARAMS, box_corners, build_bev_scenes, make_scene, ray_cast, targets
from kd_engine.errors import ConfigError


def test_centre_distance_ap_hand_placed_boxes():
    # scene 0: cars at (0, 0) and (5, 5); scene 1: a car at (2, 0) and a pedestrian at (0, 3)
    truths = [np.array([[0, 0.0, 0.0, 4, 2, 0], [0, 5.0, 5.0, 4, 2, 0]]),
              np.array([[0, 2.0, 0.0, 4, 2, 0], [1, 0.0, 3.0, 0.6, 0.6, 0]])]
    detections = [np.array([[0, 0.9, 0.3, 0.4],     # car rank 1: 0.5 m from (0, 0): TP, precision 1/1
                            [0, 0.7, 5.2, 5.9],     # car rank 3: 0.92 m from (5, 5): TP, precision 2/3
                            [0, 0.6, 0.1, 0.1],     # car rank 4: (0, 0) already taken: FP
                            [1, 0.95, 0.0, 3.0]]),  # pedestrian rank 1: none in scene 0: FP
                  np.array([[0, 0.8, 5.0, 5.0],     # car rank 2: nothing near in scene 1: FP
                            [0, 0.5, 3.5, 0.0],     # car rank 5: 1.5 m from (2, 0), beyond 1 m: FP
                            [1, 0.4, 0.0, 3.8],     # pedestrian rank 2: 0.8 m away: TP, precision 1/2
                            [2, 0.9, 2.0, 0.0]])]   # a cyclist on the car: wrong class, no cyclists at all
    ap = centre_distance_ap(detections, truths, num_classes=3, radius=1.0)
    # car: 3 true objects, found at ranks 1 and 3 -> (1/1 + 2/3) / 3; pedestrian: (1/2) / 1
    assert ap[0] == pytest.approx((1 + 2 / 3) / 3)
    assert ap[1] == pytest.approx(0.5)
    assert np.isnan(ap[2])


def test_centre_distance_ap_edges():
    truth = [np.array([[0, 0.0, 0.0], [0, 0.6, 0.0]])]
    # the detection at 0.5 takes the nearer object (0.6, 0): the second detection then finds (0, 0)
    det = [np.array([[0, 0.9, 0.5, 0.0], [0, 0.8, -1.0, 0.0]])]
    assert centre_distance_ap(det, truth, 1)[0] == pytest.approx((1 + 1) / 2)  # exactly 1 m counts
    assert centre_distance_ap([np.zeros((0, 4))], truth, 1)[0] == 0.0  # nothing found
    perfect = [np.array([[0, 0.5, 0.0, 0.0], [0, 0.4, 0.6, 0.0]])]
    assert centre_distance_ap(perfect, truth, 1)[0] == 1.0
    assert match_counts(det[0], truth[0], threshold=0.85) == (1, 0, 1)
    with pytest.raises(ValueError, match="scenes"):
        centre_distance_ap(det, truth + truth, 1)


def test_decode_places_a_peak_at_its_cell_plus_offset():
    logits = torch.full((1, 3, 16, 16), -8.0)
    logits[0, 1, 4, 10] = 3.0  # a pedestrian at row 4, column 10
    regression = torch.zeros(1, 4, 16, 16)
    regression[0, :2, 4, 10] = torch.tensor([0.25, 0.75])
    det = decode(logits, regression, output_cell=1.0, top=5)[0]
    best = det[det[:, 1].argmax()]
    assert best[0] == 1 and best[1] == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    assert best[2:] == pytest.approx([10.25 - 8, 4.75 - 8])


def test_ray_cast_hits_the_near_face_only():
    # a 2 m square 5 m east of the sensor: points on its west face x = 4 (below 1.5 m) or on its
    # roof (z = 1.5 m, 4 <= x <= 6); none on the far faces
    box = np.array([[0, 5.0, 0.0, 2.0, 2.0, 0.0]])
    pts = ray_cast(box, np.array([1.5]), rays=720, beams=24, sensor_height=1.8)
    face, roof = np.isclose(pts[:, 0], 4.0), np.isclose(pts[:, 2], 1.5)
    assert face.sum() > 0 and roof.sum() > 0 and np.all(face | roof)
    assert np.all(np.abs(pts[:, 1]) <= 1.0 + 1e-9) and np.all((pts[:, 0] >= 4 - 1e-9) & (pts[:, 0] <= 6 + 1e-9))
    assert pts[:, 2].min() >= 0 and pts[:, 2].max() <= 1.5 + 1e-9
    # density ∝ 1/range²: the same face twice as far gets about a quarter of the points
    far = ray_cast(box + np.array([[0, 5.0, 0, 0, 0, 0]]), np.array([1.5]), rays=720, beams=24, sensor_height=1.8)
    assert 0.15 < len(far) / len(pts) < 0.4
    # a box behind another is shadowed: only beams that pass over the near box reach it
    hidden = np.array([[0, 9.0, 0, 1, 1, 0]])
    alone = ray_cast(hidden, np.array([1.5]), 720, 24, 1.8)
    both = ray_cast(np.concatenate([box, hidden]), np.array([1.5, 1.5]), 720, 24, 1.8)
    assert 0 < (both[:, 0] > 6.5).sum() < 0.5 * len(alone)
    assert box_corners(box)[0].tolist() == [[6, 1], [4, 1], [4, -1], [6, -1]]


def test_scenes_and_targets_are_seeded_and_consistent():
    p = {**PARAMS}
    a, b = make_scene(np.random.default_rng(3), p), make_scene(np.random.default_rng(3), p)
    assert np.array_equal(a.points, b.points) and np.array_equal(a.boxes, b.boxes)
    heat, reg, mask = targets(a.boxes, p)
    assert heat.shape == (3, 16, 16) and mask.sum() == len(a.boxes)
    for cls, x, y, l, w, _ in a.boxes:
        r, c = int(y + 8), int(x + 8)
        assert heat[int(cls), r, c] == 1.0 and reg[:, r, c] == pytest.approx([x + 8 - c, y + 8 - r, np.log(l), np.log(w)])
    cfg = SimpleNamespace(name="bev_scenes", params={"n_train": 6, "n_test": 3})
    data = build_bev_scenes(cfg, 0)
    assert data.input_shape == (3, 32, 32) and len(data.train) == 6 and data.test.ids.tolist() == [6, 7, 8]
    assert torch.equal(data.train.x, build_bev_scenes(cfg, 0).train.x)
    assert not torch.equal(data.train.x, build_bev_scenes(cfg, 1).train.x)
    assert data.train.x[:, 0].sum() > 0 and data.train.subset([1]).boxes[0] is data.train.boxes[1]


@pytest.mark.parametrize("params, field", [({"inputs": ["sonar"]}, "data.params.inputs"),
                                           ({"heatmap_stride": 3}, "data.params.heatmap_stride"),
                                           ({"dropout": 2.0}, "data.params.dropout"),
                                           ({"rays": 0}, "data.params.rays"), ({"size": 3}, "data.params")])
def test_bad_generator_params_name_the_field(params, field):
    with pytest.raises(ConfigError, match=field):
        build_bev_scenes(SimpleNamespace(name="bev_scenes", params=params), 0)
