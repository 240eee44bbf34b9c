"""Super-voxel pooling and cosine k-means, the parts of a super-voxel clustering loop (PointDC's
SVC): per-point features are averaged per super-voxel (groups of nearby points on one smooth
surface), the super-voxel features are clustered on the unit sphere, and each super-voxel's
cluster becomes the pseudo-label of all its points, so a label never splits a super-voxel."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def scatter_mean(values: torch.Tensor, index: torch.Tensor, count: int) -> torch.Tensor:
    """(count, D): the mean of the rows of ``values`` (N, D) with each ``index`` (N,) value; zero
    for an index no row has."""
    total = values.new_zeros(count, values.shape[1]).index_add_(0, index, values)
    size = values.new_zeros(count).index_add_(0, index, values.new_ones(len(index)))
    return total / size.clamp_min(1.0)[:, None]


def cosine_kmeans(x: torch.Tensor, k: int, iterations: int = 80, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means: (centroids (k, D), L2-normalised; assignment (M,)) of the rows of ``x``
    (M, D), compared by cosine. Initial centroids are k distinct rows drawn by ``seed``; a
    cluster that empties keeps its previous centroid."""
    x = F.normalize(x.float(), dim=1)
    k = min(k, len(x))
    generator = torch.Generator().manual_seed(int(seed))
    centroids = x[torch.randperm(len(x), generator=generator)[:k].to(x.device)].clone()
    assign = torch.zeros(len(x), dtype=torch.long, device=x.device)
    for _ in range(iterations):
        new = (x @ centroids.T).argmax(1)
        sums = scatter_mean(x, new, k)
        filled = torch.bincount(new, minlength=k) > 0
        centroids = torch.where(filled[:, None], F.normalize(sums, dim=1), centroids)
        if torch.equal(new, assign):
            break
        assign = new
    return centroids, (x @ centroids.T).argmax(1)
