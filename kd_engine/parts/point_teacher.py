"""2-D teacher features for 3-D points: a 2-D network's feature maps of rendered views, read at
each point's pixel where the point is visible, averaged over views and then over super-voxels,
and cached on disk (the teacher is frozen, so its point features never change for a scene).

The 2-D network is a fixed texture descriptor, a Gabor energy bank: quadrature pairs of
zero-mean Gabor filters on the luminance at a few periods (a geometric series starting near the
Nyquist period of 2 px) and orientations; each pair's energy √(even² + odd²) does not depend on
the texture's phase, so one stripe pattern gives one response wherever it is read, and the
zero mean makes it blind to flat colour (the classes' colours overlap; their textures do not).
Energies are pooled by a small Gaussian window. `log_standardise` then takes the log (texture
energy is multiplicative in the surface's brightness, the log turns that into an offset) and
standardises each channel with the mean and std of the *training* scenes' points, so that no
channel dominates the cosine geometry by its scale alone; `whiten` keeps the leading principal
directions of those training points (the 12 channels of neighbouring periods and angles are
strongly correlated) at unit variance each, so that cosine k-means weighs every texture contrast
alike rather than the few largest. No label is used anywhere.

Why not random filters (the first version): a single random filter's |response| varies with the
phase of the texture under it, and its raw energies are dominated by a few large channels; their
back-projected features clustered no better than the raw point inputs.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kd_engine.config import stable_hash

CACHE_VERSION = 2


def gabor_pair(period: float, angle: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Even and odd Gabor kernels (cos / sin carrier of ``period`` px along ``angle``, Gaussian
    envelope of std ``sigma`` px), each made zero-mean under the envelope and L1-normalised."""
    r = int(np.ceil(2.5 * sigma))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float64)
    envelope = np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
    phase = 2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period
    pair = []
    for carrier in (np.cos(phase), np.sin(phase)):
        k = envelope * carrier
        k = k - envelope * (k.sum() / envelope.sum())  # zero mean: no response to a flat colour
        pair.append(k / np.abs(k).sum())
    return pair[0], pair[1]


def gaussian_kernel(sigma: float) -> torch.Tensor:
    r = int(np.ceil(2 * sigma))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    g = np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
    return torch.as_tensor(g / g.sum(), dtype=torch.float32)[None, None]


class GaborTeacher(nn.Module):
    """images (V, 3, H, W) -> Gabor energies (V, scales·orientations, H, W); fixed, no training.

    Periods ``min_period · step^i`` (i < scales) px, ``orientations`` angles in [0, π), envelope
    std 0.56·period (about one octave of bandwidth), energy pooled by a Gaussian of std ``pool`` px."""

    def __init__(self, min_period: float = 2.5, scales: int = 3, step: float = 1.3, orientations: int = 4,
                 pool: float = 2.0):
        super().__init__()
        even, odd = [], []
        size = int(np.ceil(2.5 * 0.56 * min_period * step ** (scales - 1))) * 2 + 1
        for i in range(scales):
            period = min_period * step ** i
            for o in range(orientations):
                e, d = gabor_pair(period, np.pi * o / orientations, 0.56 * period)
                pad = (size - len(e)) // 2  # one kernel size for the whole bank (zero padding)
                even.append(np.pad(e, pad)), odd.append(np.pad(d, pad))
        self.register_buffer("even", torch.as_tensor(np.stack(even), dtype=torch.float32)[:, None])
        self.register_buffer("odd", torch.as_tensor(np.stack(odd), dtype=torch.float32)[:, None])
        self.register_buffer("window", gaussian_kernel(pool))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        lum = images.mean(1, keepdim=True)
        pad = self.even.shape[-1] // 2
        energy = (F.conv2d(lum, self.even, padding=pad) ** 2 + F.conv2d(lum, self.odd, padding=pad) ** 2).sqrt()
        V, C, H, W = energy.shape
        pooled = F.conv2d(energy.reshape(V * C, 1, H, W), self.window, padding=self.window.shape[-1] // 2)
        return pooled.reshape(V, C, H, W)


def log_standardise(features: np.ndarray, valid: np.ndarray, reference: np.ndarray, reference_valid: np.ndarray,
                    floor: float = 1e-3) -> np.ndarray:
    """log(features + floor), standardised per channel by the mean and std of the reference
    (training) points' log features; invalid points stay zero. (S, N, C) float32."""
    ref = np.log(reference[reference_valid].astype(np.float64) + floor)
    mean, std = ref.mean(0), ref.std(0) + 1e-9
    out = (np.log(features.astype(np.float64) + floor) - mean) / std
    return np.where(valid[..., None], out, 0.0).astype(np.float32)


def whiten(features: np.ndarray, valid: np.ndarray, reference: np.ndarray, reference_valid: np.ndarray,
           components: int) -> np.ndarray:
    """Projection on the first ``components`` principal directions of the reference (training)
    points' features, each scaled to unit variance (scikit-learn's PCA, whiten=True); invalid
    points stay zero. (S, N, components) float32."""
    from sklearn.decomposition import PCA

    pca = PCA(components, whiten=True, random_state=0).fit(reference[reference_valid])
    out = np.zeros((*features.shape[:-1], components), np.float32)
    out[valid] = pca.transform(features[valid])
    return out


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


def point_teacher_features(teacher: nn.Module, images: np.ndarray, pixel: np.ndarray, visible: np.ndarray,
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
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # this process's own: arms run side by side
    with open(tmp, "wb") as handle:
        np.savez(handle, features=features, valid=valid)
    tmp.replace(path)
    return features, valid
