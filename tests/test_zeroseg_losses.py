"""Known answers of ZeroSeg's segment-token losses (kd_engine.losses.segment_tokens): zero for
tokens equal to the views, hand-computed 2-d cases, NumPy loops and a brute-force search over
permutations for the Hungarian matching, masking and reductions, and clear shape errors."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from kd_engine.losses.segment_tokens import (global_token_cosine, hungarian_assignment, hungarian_token_cosine,
                                             min_token_cosine, usage_entropy, view_token_costs)


def _np_cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_zero_when_a_token_equals_every_view():
    views = torch.randn(3, 4, 5)
    tokens = torch.cat([views * 2.0, torch.randn(3, 2, 5)], dim=1)  # scale does not matter to a cosine
    assert torch.allclose(min_token_cosine(tokens, views, reduction="none"), torch.zeros(3), atol=1e-5)
    assert torch.allclose(hungarian_token_cosine(tokens, views, reduction="none"), torch.zeros(3), atol=1e-5)


def test_hand_computed_two_dimensional_case():
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    views = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])  # view 0 is token 0; view 1 sits at 45° to both
    expected = 0.0 + (1.0 - 1.0 / math.sqrt(2.0))
    assert min_token_cosine(tokens, views).item() == pytest.approx(expected, abs=1e-6)
    assert hungarian_token_cosine(tokens, views).item() == pytest.approx(expected, abs=1e-6)
    assert global_token_cosine(tokens, torch.tensor([[1.0, 1.0]])).item() == pytest.approx(0.0, abs=1e-6)
    assert global_token_cosine(tokens, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)


def test_min_matches_a_numpy_loop_and_masks_views():
    rng = np.random.default_rng(0)
    z, e = rng.normal(size=(4, 5, 3)), rng.normal(size=(4, 3, 3))
    mask = np.array([[1, 1, 1], [1, 0, 1], [0, 0, 0], [1, 1, 0]], dtype=bool)
    expected = [sum(min(1 - _np_cos(z[b, k], e[b, v]) for k in range(5)) for v in range(3) if mask[b, v])
                for b in range(4)]
    got = min_token_cosine(torch.tensor(z), torch.tensor(e), torch.tensor(mask), reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    assert got[2].item() == 0.0  # no kept view: no target
    assert min_token_cosine(torch.tensor(z), torch.tensor(e), torch.tensor(mask), reduction="sum").item() == \
        pytest.approx(sum(expected), abs=1e-5)
    assert min_token_cosine(torch.tensor(z), torch.tensor(e), torch.tensor(mask)).item() == \
        pytest.approx(np.mean(expected), abs=1e-5)


def test_hungarian_is_the_best_one_to_one_matching_where_min_collapses():
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    views = torch.tensor([[[1.0, 0.1], [1.0, 0.3]]])  # both views are nearest to token 0
    costs = view_token_costs(tokens, views)[0].numpy()
    assert (costs.argmin(axis=1) == 0).all()  # min over tokens: one token absorbs both views
    match = hungarian_assignment(view_token_costs(tokens, views))[0].tolist()
    assert len(set(match)) == 2
    brute = min(sum(costs[v, k] for v, k in enumerate(perm)) for perm in itertools.permutations(range(3), 2))
    assert hungarian_token_cosine(tokens, views).item() == pytest.approx(brute, abs=1e-6)
    assert hungarian_token_cosine(tokens, views).item() > min_token_cosine(tokens, views).item()


def test_hungarian_random_cases_against_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(5):
        z, e = torch.tensor(rng.normal(size=(1, 4, 3))), torch.tensor(rng.normal(size=(1, 3, 3)))
        costs = view_token_costs(z, e)[0].numpy()
        brute = min(sum(costs[v, k] for v, k in enumerate(p)) for p in itertools.permutations(range(4), 3))
        assert hungarian_token_cosine(z, e).item() == pytest.approx(brute, abs=1e-6)
    masked = hungarian_assignment(view_token_costs(z, e), torch.tensor([[True, False, True]]))
    assert masked[0, 1].item() == -1 and masked[0, 0].item() != masked[0, 2].item()


def test_no_gradient_reaches_the_teacher_views_and_tokens_get_one():
    tokens, views = torch.randn(2, 3, 4, requires_grad=True), torch.randn(2, 2, 4, requires_grad=True)
    (min_token_cosine(tokens, views) + hungarian_token_cosine(tokens, views)
     + global_token_cosine(tokens, views[:, 0])).backward()
    assert views.grad is None and tokens.grad is not None and tokens.grad.abs().sum() > 0


def test_usage_entropy():
    assert usage_entropy(torch.tensor([0, 1, 2, 3]), 4).item() == pytest.approx(math.log(4))
    assert usage_entropy(torch.tensor([[2, 2], [2, -1]]), 4).item() == pytest.approx(0.0)
    assert usage_entropy(torch.tensor([0, 0, 1, -1]), 3).item() == pytest.approx(
        -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))


def test_shape_and_setting_errors_are_clear():
    with pytest.raises(ValueError, match=r"tokens \(B, K, D\) and views \(B, V, D\)"):
        min_token_cosine(torch.randn(2, 3, 4), torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="view_mask must have shape"):
        min_token_cosine(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least as many tokens as views"):
        hungarian_token_cosine(torch.randn(1, 2, 4), torch.randn(1, 3, 4))
    with pytest.raises(ValueError, match="reduction must be one of"):
        min_token_cosine(torch.randn(1, 2, 4), torch.randn(1, 2, 4), reduction="avg")
    with pytest.raises(ValueError, match="whole \\(B, D\\)"):
        global_token_cosine(torch.randn(1, 2, 4), torch.randn(1, 3))
