"""Known-answer tests of the Hungarian set loss (kd_engine.losses.set_loss): a hand-computed
one-box case, the match against a brute-force search over permutations with a cost computed
independently in NumPy, a perfect permuted prediction, an image without boxes, reductions."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from kd_engine.losses.set_loss import hungarian_match, set_loss, set_loss_parts


def _np_giou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area = lambda x: (x[2] - x[0]) * (x[3] - x[1])  # noqa: E731
    union = area(a) + area(b) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def _random_boxes(rng, n):
    lo = rng.uniform(0, 0.6, (n, 2))
    return np.concatenate([lo, lo + rng.uniform(0.05, 0.4, (n, 2))], 1)


def test_one_box_by_hand():
    logits = torch.tensor([[[0.0, 2.0, 0.0]]])
    boxes = torch.tensor([[[0.1, 0.1, 0.5, 0.5]]])
    target = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.2, 0.2, 0.6, 0.6]])}]
    parts = set_loss_parts(logits, boxes, target)
    ce = -(2.0 - math.log(math.exp(0) + math.exp(2) + math.exp(0)))
    giou = 0.09 / 0.23 - (0.25 - 0.23) / 0.25  # intersection 0.3², union 2·0.4² − 0.09, hull 0.5²
    assert parts["cls"].item() == pytest.approx(ce, rel=1e-5)
    assert parts["l1"].item() == pytest.approx(5 * 0.4, rel=1e-5)
    assert parts["giou"].item() == pytest.approx(2 * (1 - giou), rel=1e-5)
    assert set_loss(logits, boxes, target, reduction="none").item() == pytest.approx(ce + 2.0 + 2 * (1 - giou), rel=1e-5)


def test_match_is_the_brute_force_minimum():
    rng = np.random.default_rng(0)
    for _ in range(5):
        Q, G, K = 5, 3, 4
        logits = rng.normal(size=(Q, K + 1))
        boxes, gt = _random_boxes(rng, Q), _random_boxes(rng, G)
        labels = rng.integers(1, K + 1, G)
        prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        cost = np.array([[-prob[q, labels[g]] + 5 * np.abs(boxes[q] - gt[g]).sum() - 2 * _np_giou(boxes[q], gt[g])
                          for g in range(G)] for q in range(Q)])
        best = min(itertools.permutations(range(Q), G), key=lambda p: sum(cost[p[g], g] for g in range(G)))
        (rows, cols), = hungarian_match(torch.tensor(logits[None]), torch.tensor(boxes[None]),
                                        [{"labels": torch.tensor(labels), "boxes": torch.tensor(gt)}])
        assert cols.tolist() == list(range(G))
        assert sum(cost[r, c] for r, c in zip(rows, cols)) == pytest.approx(sum(cost[best[g], g] for g in range(G)))


def test_perfect_permuted_prediction_has_no_box_loss():
    gt = torch.tensor([[0.1, 0.1, 0.3, 0.4], [0.5, 0.5, 0.9, 0.8], [0.2, 0.6, 0.4, 0.9]])
    labels = torch.tensor([2, 1, 3])
    order = [2, 0, 3, 1]  # query q predicts target order[q]; query 2 predicts nothing
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(4, 1)
    logits = torch.full((4, 4), -20.0)
    logits[2, 0] = 20.0
    for q, g in enumerate(order):
        if g < 3:
            boxes[q], logits[q, labels[g]] = gt[g], 20.0
    target = [{"labels": labels, "boxes": gt}]
    (rows, cols), = hungarian_match(logits[None], boxes[None], target)
    assert rows.tolist() == [1, 3, 0] and cols.tolist() == [0, 1, 2]
    parts = set_loss_parts(logits[None], boxes[None], target)
    assert parts["l1"].item() == pytest.approx(0, abs=1e-6) and parts["giou"].item() == pytest.approx(0, abs=1e-6)
    assert parts["cls"].item() == pytest.approx(0, abs=1e-6)


def test_image_without_boxes_is_the_no_object_cross_entropy():
    logits = torch.randn(1, 3, 4)
    parts = set_loss_parts(logits, torch.rand(1, 3, 4), [{"labels": torch.zeros(0, dtype=torch.long),
                                                          "boxes": torch.zeros(0, 4)}])
    expected = -torch.log_softmax(logits[0], -1)[:, 0].mean()
    assert parts["cls"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["l1"].item() == 0 and parts["giou"].item() == 0


def test_reductions_weights_and_gradients():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 3, requires_grad=True)
    lo = torch.rand(3, 4, 2) * 0.5
    boxes = torch.cat([lo, lo + 0.3], -1).requires_grad_()
    targets = [{"labels": torch.tensor([1, 2][:n]), "boxes": torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.5, 0.2, 0.9, 0.7]])[:n]}
               for n in (2, 1, 0)]
    per = set_loss(logits, boxes, targets, reduction="none")
    assert per.shape == (3,)
    assert set_loss(logits, boxes, targets).item() == pytest.approx(per.mean().item())
    assert set_loss(logits, boxes, targets, reduction="sum").item() == pytest.approx(per.sum().item())
    unmatched = set_loss_parts(logits, boxes, targets, no_object_weight=0.0)["cls"]
    matched = set_loss_parts(logits, boxes, targets, no_object_weight=1.0)["cls"]
    assert torch.isfinite(unmatched[:2]).all() and torch.isfinite(matched).all()
    per.sum().backward()
    assert logits.grad.abs().sum() > 0 and boxes.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="reduction"):
        set_loss(logits, boxes, targets, reduction="avg")
    with pytest.raises(ValueError, match="exceed"):
        set_loss(logits[:1, :1], boxes[:1, :1], targets[:1])
