"""2-D teacher features for 3-D points: a 2-D network's feature maps of rendered views, read at
each point's pixel where the point is visible, averaged over views and then over super-voxels,
and cached on disk (the teacher is frozen, so its point features never change for a scene).

The 2-D network here is a frozen random convolution with local texture pooling: zero-mean
random filters (blind to flat colour, so they respond to texture and edges), their absolute
response, averaged over a small window (local texture energy). Random filters at several
orientations and scales separate textures of different frequency and direction without any
training, which is all a stand-in for a self-supervised image encoder needs to do here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kd_engine.config import stable_hash
from kd_engine.parts.supervoxel import scatter_mean

CACHE_VERSION = 1


class TextureTeacher(nn.Module):
    """images (V, 3, H, W) -> texture features (V, channels, H, W); frozen, seeded."""

    def __init__(self, channels: int = 32, kernel: int = 5, pool: int = 5, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        weight = torch.randn(channels, 3, kernel, kernel, generator=generator)
        weight -= weight.mean(dim=(1, 2, 3), keepdim=True)  # zero mean: no response to a flat colour
        self.register_buffer("weight", weight / weight.flatten(1).norm(dim=1)[:, None, None, None])
        self.pool = pool

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        response = F.conv2d(images, self.weight, padding=self.weight.shape[-1] // 2).abs()
        return F.avg_pool2d(response, self.pool, stride=1, padding=self.pool // 2, count_include_pad=False)


def backproject(feature_maps: np.ndarray, pixel: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, C), valid (N,)): the mean over the views where a point is visible of the
    feature at its pixel; ``feature_maps`` (V, C, H, W), ``pixel`` (V, N, 2) (col, row), ``visible``
    (V, N). A point visible in no view gets zeros and valid False (hidden points never read the
    foreground surface's features)."""
    V, C = feature_maps.shape[:2]
    total = np.zeros((pixel.shape[1], C))
    seen = np.zeros(pixel.shape[1])
    for v in range(V):
        m = visible[v]
        total[m] += feature_maps[v][:, pixel[v, m, 1], pixel[v, m, 0]].T
        seen += m
    return total / np.maximum(seen, 1)[:, None], seen > 0


def supervoxel_average(features: np.ndarray, valid: np.ndarray, supervoxel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each point gets the mean feature of the valid points of its super-voxel; a super-voxel with
    no valid point leaves its points invalid (zeros)."""
    count = int(supervoxel.max()) + 1
    f = torch.as_tensor(features * valid[:, None], dtype=torch.float64)
    index = torch.as_tensor(supervoxel)
    total = f.new_zeros(count, f.shape[1]).index_add_(0, index, f)
    size = f.new_zeros(count).index_add_(0, index, torch.as_tensor(valid, dtype=torch.float64))
    mean = (total / size.clamp_min(1.0)[:, None]).numpy()
    return mean[supervoxel], (size > 0).numpy()[supervoxel]


def point_teacher_features(teacher: TextureTeacher, images: np.ndarray, pixel: np.ndarray, visible: np.ndarray,
                           supervoxel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per scene (leading axis S): back-projected teacher features averaged per super-voxel,
    (S, N, C) float32, and their validity (S, N)."""
    feats, valid = [], []
    for s in range(len(images)):
        maps = teacher(torch.as_tensor(images[s]).permute(0, 3, 1, 2).float()).numpy()
        f, m = backproject(maps, pixel[s], visible[s])
        f, m = supervoxel_average(f, m, supervoxel[s])
        feats.append(f.astype(np.float32)), valid.append(m)
    return np.stack(feats), np.stack(valid)


def cached_point_features(cache_dir: str | Path, identity: dict, compute) -> tuple[np.ndarray, np.ndarray]:
    """``compute() -> (features, valid)`` once per ``identity`` (what defines them: the data
    config, its split seed and the teacher's settings), stored as ``<cache_dir>/point_teacher/<hash>.npz``."""
    path = Path(cache_dir) / "point_teacher" / f"{stable_hash({'version': CACHE_VERSION, **identity})}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as stored:
            return stored["features"], stored["valid"]
    features, valid = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, features=features, valid=valid)
    tmp.replace(path)
    return features, valid
