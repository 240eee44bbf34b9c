"""PointDC's parts, with known answers: matched mIoU (hand-computed, invariant to renaming the
clusters), the masked normalised MSE, super-voxel pooling, cosine k-means, back-projection that
leaves hidden points without a feature, and the PointNet-lite student."""
import numpy as np
import pytest
import torch

from kd_engine.cluster_metrics import match_clusters, merge_primitives
from kd_engine.losses.points import masked_normalised_mse
from kd_engine.models.pointnet import PointNetLite, knn_indices
from kd_engine.parts.point_teacher import backproject, supervoxel_average
from kd_engine.parts.supervoxel import cosine_kmeans, scatter_mean


def test_matched_miou_hand_computed():
    true = np.array([0, 0, 1, 1, 2, 2])
    clusters = np.array([1, 1, 0, 2, 2, 2])
    s = match_clusters(true, clusters, 3)
    # Hungarian: cluster 1 -> class 0, cluster 0 -> class 1, cluster 2 -> class 2 (5 points on the diagonal)
    assert s.mapping.tolist() == [1, 0, 2]
    # IoU: class 0 = 2/2, class 1 = 1/2 (one point lost to cluster 2), class 2 = 2/3 (one extra point)
    np.testing.assert_allclose(s.iou, [1.0, 0.5, 2 / 3])
    assert s.miou == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    assert s.oacc == pytest.approx(5 / 6)
    assert s.macc == pytest.approx((1 + 0.5 + 1) / 3)


def test_matched_miou_invariant_to_cluster_permutation():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 5, 400)
    clusters = np.where(rng.random(400) < 0.7, true, rng.integers(0, 5, 400))
    base = match_clusters(true, clusters, 5)
    for _ in range(5):
        renamed = rng.permutation(5)[clusters]
        s = match_clusters(true, renamed, 5)
        assert s.miou == pytest.approx(base.miou) and s.oacc == pytest.approx(base.oacc)
        np.testing.assert_array_equal(s.confusion, base.confusion)
    # more clusters than classes: an unmatched cluster's points count as wrong; a cluster matched to
    # a class the truth lacks makes only false positives there (IoU 0)
    s = match_clusters(np.array([0, 0, 1, 1]), np.array([0, 1, 2, 3]), 3, num_clusters=4)
    assert s.oacc == pytest.approx(0.5) and (s.mapping >= 0).sum() == 3
    np.testing.assert_allclose(s.iou, [0.5, 0.5, 0.0])
    assert s.miou == pytest.approx(1 / 3)


def test_merge_primitives_groups_close_centroids():
    c = np.array([[1, 0.0], [0.99, 0.05], [0, 1.0], [0.05, 0.99]])
    merged = merge_primitives(c, 2, seed=0)
    assert merged[0] == merged[1] and merged[2] == merged[3] and merged[0] != merged[2]


def test_masked_normalised_mse_known_values():
    s = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]])
    t = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [5.0, 5.0]]])
    # per point ‖n(s) − n(t)‖² = 2 − 2cos: 0, 2, 0; masked to points 0 and 1 -> (0 + 2)/2 = 1
    mask = torch.tensor([[True, True, False]])
    assert masked_normalised_mse(s, t, mask, reduction="none").tolist() == pytest.approx([1.0])
    assert masked_normalised_mse(s, s * 3, torch.ones(1, 3)).item() == pytest.approx(0.0, abs=1e-7)
    zero = masked_normalised_mse(s, t, torch.zeros(1, 3, dtype=torch.bool), reduction="none")
    assert zero.tolist() == [0.0] and torch.isfinite(zero).all()
    two = masked_normalised_mse(torch.cat([s, s]), torch.cat([t, s]), torch.cat([mask, mask]), reduction="none")
    assert two.tolist() == pytest.approx([1.0, 0.0])
    assert masked_normalised_mse(torch.cat([s, s]), torch.cat([t, s]), torch.cat([mask, mask]), reduction="sum").item() \
        == pytest.approx(1.0)
    s.requires_grad_(True)
    masked_normalised_mse(s, t, mask).backward()
    assert s.grad[0, 2].abs().sum() == 0  # a masked point gets no gradient
    with pytest.raises(ValueError, match="mask"):
        masked_normalised_mse(s, t, torch.ones(3))


def test_scatter_mean_and_cosine_kmeans():
    values = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    np.testing.assert_allclose(scatter_mean(values, torch.tensor([0, 0, 2]), 3).numpy(), [[2, 0], [0, 0], [0, 4]])
    rng = np.random.default_rng(1)
    directions = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1.0]])
    group = rng.integers(0, 3, 90)
    x = torch.as_tensor(directions[group] * rng.uniform(0.5, 3, (90, 1)) + rng.normal(0, 0.05, (90, 3)))
    centroids, assign = cosine_kmeans(x, 3, seed=0)
    assert match_clusters(group, assign.numpy(), 3).oacc == 1.0
    np.testing.assert_allclose(centroids.norm(dim=1).numpy(), 1.0, rtol=1e-5)


def test_backprojection_leaves_hidden_points_without_feature():
    maps = np.arange(2 * 1 * 2 * 2, dtype=float).reshape(2, 1, 2, 2)  # 2 views, 1 channel, 2x2
    pixel = np.array([[[0, 0], [1, 1], [1, 1]], [[0, 0], [0, 1], [0, 0]]])  # (views, points, (col, row))
    visible = np.array([[True, True, False], [True, False, False]])
    f, valid = backproject(maps, pixel, visible)
    # point 0: views 0 and 1 at (0, 0): (0 + 4)/2; point 1: view 0 at (col 1, row 1) = 3; point 2 hidden everywhere
    np.testing.assert_allclose(f[:, 0], [2.0, 3.0, 0.0])
    assert valid.tolist() == [True, True, False]
    g, ok = supervoxel_average(f, valid, np.array([0, 0, 1]))
    np.testing.assert_allclose(g[:, 0], [2.5, 2.5, 0.0])
    assert ok.tolist() == [True, True, False]


def test_pointnet_lite_neighbours_given_or_found():
    torch.manual_seed(0)
    x = torch.randn(2, 50, 12)
    model = PointNetLite((50, 12), 5, width=8, out_dim=6, k=4)
    out = model(x)
    assert out.shape == (2, 50, 5)
    torch.testing.assert_close(model(x, knn_indices(x[..., :3], 4)), out)
    # the neighbour max makes the output depend on the point's neighbourhood, not on the point order
    perm = torch.randperm(50)
    torch.testing.assert_close(model(x[:, perm])[:, :], out[:, perm], rtol=1e-5, atol=1e-5)
