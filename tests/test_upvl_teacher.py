"""UP-VL's 2-D "vision–language" teacher stand-in: the balanced pixel InfoNCE, that training on
coloured squares gives pixel features nearest their class embedding, and the caches."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kd_engine.parts.vl_teacher import balanced_pixel_nce, cached_feature_maps, cached_vl_teacher

COLOURS = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.1, 1.0]])


def _squares(n=96, size=12, seed=0):
    """Grey images with one coloured 5×5 square each; pixel class 1 + colour index, 0 elsewhere."""
    rng = np.random.default_rng(seed)
    images = torch.full((n, 3, size, size), 0.5)
    labels = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        c, r, q = int(rng.integers(3)), int(rng.integers(0, size - 5)), int(rng.integers(0, size - 5))
        images[i, :, r:r + 5, q:q + 5] = COLOURS[c][:, None, None]
        labels[i, r:r + 5, q:q + 5] = c + 1
    return images + 0.05 * torch.from_numpy(rng.normal(size=images.shape)).float(), labels


def _refuse():
    raise AssertionError("a cached teacher must not ask for its training data")


def test_balanced_nce_known_answer():
    # one image of 2 pixels: background pixel with logits (0, 0) -> log 2; object pixel of class 1
    # with logits (0, log 3) -> -log(3/4); balanced mean = ½(log 2 + log 4/3)
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(3.0)]]]])  # (1, 2 classes, 1, 2)
    labels = torch.tensor([[[0, 1]]])
    expected = 0.5 * (math.log(2.0) + math.log(4.0 / 3.0))
    assert balanced_pixel_nce(logits, labels).item() == pytest.approx(expected, abs=1e-6)
    only_bg = balanced_pixel_nce(logits, torch.tensor([[[0, 0]]]))
    assert only_bg.item() == pytest.approx(0.5 * (math.log(2.0) + math.log(4.0)), abs=1e-6)


def test_trained_teacher_names_pixels_and_is_cached(tmp_path):
    torch.set_num_threads(1)
    images, labels = _squares()
    identity = {"generator": "squares", "n": 96}
    model, path, losses = cached_vl_teacher(lambda: (images, labels), 3, identity, tmp_path, epochs=15, batch=32)
    assert losses[-1] < losses[0]
    test_images, test_labels = _squares(n=30, seed=1)
    with torch.no_grad():
        pred = model.pixel_logits(model(test_images)).argmax(1)
    fg = test_labels > 0
    assert (pred[fg] == test_labels[fg]).float().mean() > 0.9
    assert (pred[~fg] == 0).float().mean() > 0.9
    again, same_path, same_losses = cached_vl_teacher(_refuse, 3, identity, tmp_path, epochs=15, batch=32)
    assert same_path == path and same_losses == pytest.approx(losses)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    maps = cached_feature_maps(model, test_images, path, {"set": "test"}, tmp_path)
    assert maps.shape == (30, 16, 12, 12)
    reread = cached_feature_maps(model, test_images, path, {"set": "test"}, tmp_path)
    assert torch.equal(reread, maps)  # the float16 file gives back what the first call gave
    assert len(list((tmp_path / "vl_features").glob("*.npy"))) == 1
