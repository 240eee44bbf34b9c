"""UP-VL's auto-labelling on hand-built point clouds: differencing, DBSCAN segments, motion and
VL-similarity labels, zero-shot naming and instance recall."""
from __future__ import annotations

import numpy as np
from sklearn.cluster import DBSCAN

from kd_engine.parts.autolabel import (MOVING, STATIC, auto_label, cosine_to_classes, instance_recall,
                                       moving_points, name_clusters, segments)


def _blob(centre, n=30, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    return np.asarray(centre, dtype=float) + rng.uniform(-spread, spread, size=(n, 3))


def _scene():
    """Three blobs 2 m apart above a ground sheet: A static, B moved 1 m between frames, C static."""
    a, b, c = _blob([0, 0, 0.5], seed=1), _blob([2, 0, 0.5], seed=2), _blob([0, 2, 0.5], seed=3)
    ground = np.c_[np.random.default_rng(4).uniform(-1, 3, size=(60, 2)), np.zeros(60)]
    current = np.concatenate([a, b, c, ground])
    previous = np.concatenate([_blob([0, 0, 0.5], seed=11), b - [1.0, 0, 0], _blob([0, 2, 0.5], seed=13), ground])
    truth = np.repeat([0, 1, 2, -1], [30, 30, 30, 60])
    return current, previous, truth


def test_moving_points_by_nearest_neighbour():
    previous = np.array([[0.0, 0, 0], [1.0, 0, 0]])
    current = np.array([[0.05, 0, 0], [1.0, 0.3, 0], [5.0, 5, 5]])
    assert moving_points(current, previous, threshold=0.2).tolist() == [False, True, True]
    assert moving_points(current, np.zeros((0, 3)), 0.2).all()


def test_segments_match_sklearn_and_leave_unkept_points_out():
    current, _, truth = _scene()
    keep = current[:, 2] > 0.1
    ids = segments(current, keep, eps=0.2, min_samples=4)
    assert (ids[~keep] == -1).all()
    np.testing.assert_array_equal(ids[keep], DBSCAN(eps=0.2, min_samples=4).fit(current[keep]).labels_)
    # the three blobs are three segments, each exactly one blob
    for t in range(3):
        assert len(set(ids[truth == t].tolist())) == 1 and ids[truth == t][0] >= 0
    assert len(set(ids[truth >= 0].tolist())) == 3


def test_auto_label_motion_only_and_with_vl_similarity():
    current, previous, truth = _scene()
    above = current[:, 2] > 0.1
    visible = np.ones(len(current), dtype=bool)
    similarity = np.where(truth == 0, 0.9, 0.2)  # the teacher recognises blob A only
    common = dict(eps=0.2, min_samples=4, motion_threshold=0.2, motion_fraction=0.5)
    motion = auto_label(current, previous, above, similarity, visible, vl_threshold=None, **common)
    assert motion.count(MOVING) == 1 and motion.count(STATIC) == 0
    assert (motion.cluster[truth == 1] == 0).all() and (motion.cluster[truth != 1] == -1).all()
    both = auto_label(current, previous, above, similarity, visible, vl_threshold=0.5, **common)
    assert both.count(MOVING) == 1 and both.count(STATIC) == 1
    assert set(both.cluster[truth == 0].tolist()) == {int(np.flatnonzero(both.source == STATIC)[0])}
    assert (both.cluster[truth == 2] == -1).all() and (both.cluster[truth == -1] == -1).all()
    assert both.objectness.sum() == 60
    # a segment the camera does not see is never a static label, however similar it looks
    hidden = auto_label(current, previous, above, similarity, truth != 0, vl_threshold=0.5, **common)
    assert hidden.count(STATIC) == 0


def test_zero_shot_naming_by_mean_cosine():
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    features = np.array([[1.0, 0.1], [0.9, -0.2], [0.1, 1.0], [-0.2, 0.7], [-1.0, 0.9], [-1.0, -0.8]])
    cluster = np.array([0, 0, 1, 1, 2, 2])
    np.testing.assert_allclose(cosine_to_classes(features[:1], embeddings)[0],
                               [1 / np.sqrt(1.01), 0.1 / np.sqrt(1.01), -1 / np.sqrt(1.01)])
    assert name_clusters(features, cluster, embeddings) == {0: 0, 1: 1, 2: 2}


def test_instance_recall_needs_half_the_points_in_one_cluster():
    truth = np.array([0, 0, 0, 0, 1, 1, 1, 1, -1, -1])
    split = np.array([5, 5, 6, 6, 7, 7, 7, -1, -1, -1])  # object 0 cut in halves (IoU 0.5), 1 mostly found
    assert instance_recall(truth, split) == {0: True, 1: True}
    merged = np.array([3, 3, 3, 3, 3, 3, 3, 3, 3, 3])  # one blob over everything: IoU 0.4
    assert instance_recall(truth, merged) == {0: False, 1: False}
    assert instance_recall(truth, np.full(10, -1)) == {0: False, 1: False}
