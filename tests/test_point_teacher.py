"""The Gabor-energy 2-D teacher of PointDC: blind to flat colour, phase-invariant on a grating
(the property a single random filter lacks), tuned to orientation, and the log-standardisation
equals a numpy recomputation with the reference split's statistics."""
from __future__ import annotations

import numpy as np
import torch

from kd_engine.parts.point_teacher import GaborTeacher, log_standardise


def grating(period: float, angle: float, phase: float, size: int = 40) -> torch.Tensor:
    yy, xx = np.mgrid[:size, :size]
    wave = 0.5 + 0.4 * np.cos(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + phase)
    return torch.as_tensor(np.repeat(wave[None, None], 3, axis=1), dtype=torch.float32)


def test_flat_colour_gives_no_energy():
    net = GaborTeacher()
    flat = torch.ones(1, 3, 32, 32) * torch.tensor([0.2, 0.7, 0.4])[None, :, None, None]
    centre = net(flat)[0, :, 12:20, 12:20]
    assert centre.abs().max() < 1e-5


def test_energy_is_phase_invariant_and_orientation_tuned():
    net = GaborTeacher(min_period=4.0, scales=1, orientations=4, pool=1.0)
    responses = [net(grating(4.0, 0.0, phase))[0, :, 20, 20] for phase in np.linspace(0, 2 * np.pi, 7)]
    stacked = torch.stack(responses)
    # the vertical-stripe channel (angle 0) is the largest, and it hardly moves with the phase
    assert (stacked.argmax(1) == 0).all()
    assert stacked[:, 0].std() / stacked[:, 0].mean() < 0.05
    assert stacked[:, 0].mean() > 3 * stacked[:, 2].mean()  # the orthogonal orientation barely answers


def test_log_standardise_matches_numpy():
    rng = np.random.default_rng(0)
    ref, f = rng.uniform(0.1, 2, (2, 5, 3)), rng.uniform(0.1, 2, (1, 5, 3))
    ref_valid, valid = rng.random((2, 5)) > 0.3, np.array([[True, False, True, True, False]])
    logs = np.log(ref[ref_valid] + 1e-3)
    expected = (np.log(f + 1e-3) - logs.mean(0)) / (logs.std(0) + 1e-9)
    got = log_standardise(f, valid, ref, ref_valid)
    np.testing.assert_allclose(got[valid], expected[valid], rtol=1e-5)
    assert (got[~valid] == 0).all()


def test_whiten_matches_a_numpy_pca_of_the_reference():
    from kd_engine.parts.point_teacher import whiten

    rng = np.random.default_rng(1)
    ref = rng.normal(size=(3, 40, 5)) @ rng.normal(size=(5, 5))
    ref_valid = np.ones((3, 40), bool)
    f, valid = rng.normal(size=(1, 6, 5)), np.array([[True, True, False, True, True, True]])
    got = whiten(f, valid, ref, ref_valid, 2)
    flat = ref.reshape(-1, 5)
    mean = flat.mean(0)
    vals, vecs = np.linalg.eigh(np.cov(flat - mean, rowvar=False))
    top = vecs[:, ::-1][:, :2] / np.sqrt(vals[::-1][:2])
    expected = (f[valid] - mean) @ top
    np.testing.assert_allclose(np.abs(got[valid]), np.abs(expected), rtol=1e-6, atol=1e-9)  # sign is arbitrary
    assert (got[~valid] == 0).all() and got.shape == (1, 6, 2)
