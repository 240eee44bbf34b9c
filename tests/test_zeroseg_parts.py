"""ZeroSeg's parts on hand-built inputs: the multi-crop views (boxes, resizing, contrast floor,
blank crops), the zero-shot evaluator (thresholding, the validation-chosen threshold against
scikit-learn's Jaccard score, the teacher's window scores) and the segment ViT (assignment
rows, the segment embedding formula, the zero-shot logits and their background channel)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import jaccard_score

from kd_engine.models.segment_vit import SegmentViT
from kd_engine.parts.crop_views import blank_views, crop_views, embed_views, view_boxes
from kd_engine.parts.zeroshot_seg import choose_threshold, thresholded_labels, window_scores


def _quadrants(values) -> torch.Tensor:
    """(1, 1, 4, 4) image whose 2x2 quadrants are constant: values in row-major order."""
    img = torch.zeros(1, 1, 4, 4)
    for q, v in enumerate(values):
        r, c = divmod(q, 2)
        img[0, 0, 2 * r:2 * r + 2, 2 * c:2 * c + 2] = v
    return img


def test_views_are_the_whole_image_then_grid_cells_resized():
    assert view_boxes([1, 2], 4, 4) == [(0, 4, 0, 4), (0, 2, 0, 2), (0, 2, 2, 4), (2, 4, 0, 2), (2, 4, 2, 4)]
    img = _quadrants([0.1, 0.5, 0.0, 0.8])
    views = crop_views(img, [1, 2], 8)
    assert views.shape == (1, 5, 1, 8, 8)
    for q, v in enumerate([0.1, 0.5, 0.0, 0.8]):  # a constant crop stays constant when resized
        assert torch.allclose(views[0, 1 + q], torch.full((1, 8, 8), v))
    scaled = crop_views(img, [1, 2], 8, floor=0.2)
    assert scaled[0, 2].max().item() == pytest.approx(1.0) and scaled[0, 4].max().item() == pytest.approx(1.0)
    assert scaled[0, 1].max().item() == pytest.approx(0.1 / 0.2)  # below the floor: divided by the floor
    assert blank_views(img, [1, 2], 0.2).tolist() == [[False, True, False, True, False]]
    with pytest.raises(ValueError, match="grid 3 must divide"):
        view_boxes([3], 4, 4)


def test_embed_views_normalises_and_keeps_view_order():
    img = _quadrants([0.1, 0.5, 0.0, 0.8]).repeat(3, 1, 1, 1)
    out = embed_views(lambda x: torch.cat([x.mean((1, 2, 3))[:, None], torch.ones(len(x), 1)], 1), img, [1, 2], 4)
    assert out.shape == (3, 5, 2)
    np.testing.assert_allclose(out.norm(dim=-1).numpy(), 1.0, atol=1e-6)
    expected = F.normalize(torch.tensor([[0.35, 1.0], [0.1, 1.0], [0.5, 1.0], [0.0, 1.0], [0.8, 1.0]]), dim=-1)
    assert torch.allclose(out[1], expected, atol=1e-6)


def test_thresholded_labels_hand_case():
    scores = np.array([[[[0.9, 0.2]], [[0.1, 0.3]]]])  # (1, C=2, 1, 2): pixel 0 best 0.9 (class 0), pixel 1 best 0.3
    assert thresholded_labels(scores, 0.5).tolist() == [[[1, 0]]]
    assert thresholded_labels(scores, 0.0).tolist() == [[[1, 2]]]
    assert thresholded_labels(scores, 0.3).tolist() == [[[1, 0]]]  # not above the threshold: background


def test_chosen_threshold_separates_and_its_miou_is_sklearns():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, size=(6, 5, 5))
    scores = rng.uniform(-0.2, 0.2, size=(6, 3, 5, 5))
    for c in range(3):  # a labelled pixel is most similar to its class, background pixels to nothing
        scores[:, c][truth == c + 1] = rng.uniform(0.5, 0.9, size=(truth == c + 1).sum())
    t, value = choose_threshold(scores, truth, candidates=10_000)  # every pixel's value is a candidate
    assert scores.max(1)[truth == 0].max() <= t < 0.5 and value == pytest.approx(1.0)
    noisy = scores + rng.normal(0, 0.3, size=scores.shape)
    t, value = choose_threshold(noisy, truth)
    pred = thresholded_labels(noisy, t)
    assert value == pytest.approx(jaccard_score(truth.ravel(), pred.ravel(), labels=[0, 1, 2, 3], average="macro"))
    ranked = np.sort(noisy.max(1).ravel())
    grid = ranked[np.linspace(0, len(ranked) - 1, 41).round().astype(int)]
    best = max(jaccard_score(truth.ravel(), thresholded_labels(noisy, g).ravel(), labels=[0, 1, 2, 3],
                             average="macro") for g in grid)
    assert value >= best - 1e-12


def test_window_scores_average_the_windows_that_cover_a_pixel():
    text = torch.eye(3)
    views = torch.zeros(1, 1 + 4 + 16, 3)
    views[0, 0] = torch.tensor([0.0, 0.0, 1.0])  # the whole image: left out
    views[0, 1] = torch.tensor([1.0, 0.0, 0.0])  # top-left quarter
    views[0, 1 + 4 + 0] = torch.tensor([0.0, 1.0, 0.0])  # first of the 4x4 cells (the pixel at 0, 0)
    views[0, 1 + 4 + 1:] = torch.tensor([1.0, 0.0, 0.0])
    views[0, 2:5] = torch.tensor([0.0, 1.0, 0.0])
    out = window_scores(views, text, [1, 2, 4], 4, 4)
    assert out.shape == (1, 3, 4, 4)
    assert out[0, :, 0, 0].tolist() == [0.5, 0.5, 0.0]  # mean of the quarter (class 0) and its cell (class 1)
    assert out[0, :, 1, 1].tolist() == [1.0, 0.0, 0.0]
    assert out[0, :, 3, 3].tolist() == [0.5, 0.5, 0.0]


def test_segment_vit_groups_patches_and_names_pixels():
    torch.manual_seed(0)
    model = SegmentViT((1, 8, 8), 4, patch=2, dim=8, depth=1, heads=2, segments=3, embed_dim=5).eval()
    x = torch.rand(2, 1, 8, 8)
    out = model.encode(x)
    a = out["assign"]
    assert a.shape == (2, 16, 3) and torch.allclose(a.sum(-1), torch.ones(2, 16), atol=1e-5)
    g = (a.transpose(1, 2) @ out["patches"]) / a.sum(1)[..., None]  # g_k = Σ_n A_nk h_n / Σ_n A_nk
    assert torch.allclose(out["segments"], model.project(g), atol=1e-5)
    assert torch.allclose(out["pixel_embed"][0, 0], out["segments"][0, a[0, 0].argmax()])
    with torch.no_grad():
        model.class_text.copy_(torch.eye(3, 5))
        model.threshold.fill_(0.5)
    embed = torch.zeros(1, 16, 5)
    embed[0, :, 2] = 1.0  # every patch points at class 2 (label 3)
    embed[0, 5] = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])  # cos 0.707 with classes 0 and 1
    embed[0, 6] = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])  # cos 0.447 with each: below the threshold
    logits = model.pixel_logits(embed)
    assert logits.shape == (1, 4, 8, 8) and (logits[:, 0] == 0.5).all()
    labels = logits.argmax(1)[0]
    assert labels[0, 0] == 3 and labels[2, 2] == 1 and labels[2, 4] == 0 and (labels[2:4, 4:6] == 0).all()
    assert model(x).shape == (2, 4, 8, 8)
    plain = SegmentViT((1, 8, 8), 4, patch=2, dim=8, depth=1, heads=2, grouping="none").encode(x)
    assert "assign" not in plain and plain["pixel_embed"].shape == (2, 16, 32)
    with pytest.raises(ValueError, match="grouping must be one of slots, none"):
        SegmentViT((1, 8, 8), 4, grouping="pool")
    with pytest.raises(ValueError, match="window must be a non-negative integer"):
        SegmentViT((1, 8, 8), 4, window=-1)


def test_window_attention_sees_only_nearby_patches():
    torch.manual_seed(0)
    model = SegmentViT((1, 8, 8), 4, patch=2, dim=8, depth=1, heads=2, window=1).eval()
    x = torch.rand(1, 1, 8, 8)
    far = x.clone()
    far[0, 0, 6:, 6:] += 1.0  # change the bottom-right patch only
    with torch.no_grad():
        a, b = model.encode(x)["patches"], model.encode(far)["patches"]
    moved = (a - b).abs().sum(-1)[0].reshape(4, 4) > 1e-6
    assert moved[2:, 2:].all() and not moved[:2].any() and not moved[:, :2].any()  # one block: 1 patch away
