"""Known answers for the 3-D scene camera: projection and back-projection invert each other on a
hand-computed point, the z-buffer hides a point behind another, and the generators are seeded."""
import numpy as np
import pytest

from kd_engine.data.camera3d import Camera, splat, visibility, zbuffer
from kd_engine.data.scenes3d import GROUND, make_ground_pair, make_room, render_object


def _front_camera(orthographic=False):
    # at the origin looking along +y, z up: camera x = world x, camera y = -world z, depth = world y
    return Camera.look_at((0, 0, 0), (0, 1, 0), (0, 0, 1), width=8, height=8, focal=4.0, orthographic=orthographic)


def test_projection_hand_computed_and_round_trip():
    cam = _front_camera()
    point = np.array([[1.0, 2.0, -0.5]])
    uv, depth = cam.project(point)
    # u = 4·(1/2) + 4 = 6, v = 4·(0.5/2) + 4 = 5, depth 2
    np.testing.assert_allclose(uv, [[6.0, 5.0]])
    np.testing.assert_allclose(depth, [2.0])
    pix, _, inside = cam.pixels(point)
    assert pix.tolist() == [[6, 5]] and inside.tolist() == [True]
    np.testing.assert_allclose(cam.backproject(uv, depth), point, atol=1e-12)
    # the pixel centre back-projected at the point's depth projects into the same pixel
    centre = cam.backproject(pix + 0.5, depth)
    assert cam.pixels(centre)[0].tolist() == [[6, 5]]


@pytest.mark.parametrize("ortho", [False, True])
def test_round_trip_random_points(ortho):
    cam = Camera.look_at((3, -4, 2), (0.5, 0.5, 0.2), width=32, height=24, focal=20.0, orthographic=ortho)
    xyz = np.random.default_rng(0).uniform(-1, 1, (50, 3))
    uv, depth = cam.project(xyz)
    np.testing.assert_allclose(cam.backproject(uv, depth), xyz, atol=1e-9)


def test_zbuffer_hides_the_point_behind():
    cam = _front_camera()
    front, back, beside = [0.0, 1.0, 0.0], [0.0, 3.0, 0.0], [1.0, 2.0, 0.0]  # front and back share a pixel
    xyz = np.array([front, back, beside])
    depth_map = zbuffer(cam, xyz)
    pix, visible = visibility(cam, xyz, depth_map, tolerance=0.1)
    assert pix[0].tolist() == pix[1].tolist()
    assert visible.tolist() == [True, False, True]
    image, _ = splat(cam, xyz, np.array([[1.0], [2.0], [3.0]]))
    assert image[pix[0, 1], pix[0, 0], 0] == 1.0  # the front point's value, not the hidden one's
    assert image[pix[2, 1], pix[2, 0], 0] == 3.0
    assert (image == 0).sum() == 64 - 2


def test_room_is_seeded_and_labelled():
    a, b = make_room(3, points=600, render_points=4000), make_room(3, points=600, render_points=4000)
    np.testing.assert_array_equal(a.xyz, b.xyz)
    np.testing.assert_array_equal(a.views[0].image, b.views[0].image)
    assert a.xyz.shape == (600, 3) and set(np.unique(a.label)) <= set(range(5)) and {0, 1} <= set(a.label)
    assert len(a.views) == 4 and a.views[0].image.shape == (48, 48, 3)
    # floor points are at z = 0 with normal +z; a visible point's pixel shows its own class mostly
    assert np.allclose(a.xyz[a.label == 0, 2], 0) and np.allclose(a.normal[a.label == 0], [0, 0, 1])
    v = a.views[0]
    shown = v.labels[v.pixel[v.visible, 1], v.pixel[v.visible, 0]]
    assert (shown == a.label[v.visible]).mean() > 0.8


def test_ground_pair_moves_only_moving_objects():
    pair = make_ground_pair(5, objects=(4, 4), move_probability=0.5)
    f0, f1 = pair.frames
    assert (f0.label == GROUND).sum() == 512 and (f0.instance >= 0).sum() == 128 * len(pair.object_class)
    for obj, moves in enumerate(pair.object_moves):
        shift = f1.xyz[f1.instance == obj].mean(0) - f0.xyz[f0.instance == obj].mean(0)
        assert (np.hypot(*shift[:2]) > 0.4) == bool(moves)
        assert f0.moving[f0.instance == obj].all() == bool(moves)
    assert f0.views[0].image.shape == (32, 32, 3)


def test_render_object_alone():
    image, mask = render_object(2, seed=1)
    assert image.shape == (32, 32, 3) and 4 < mask.sum() < 32 * 32 / 2
    assert (image[~mask] == 0).all() and (image[mask].sum(1) > 0).any()
