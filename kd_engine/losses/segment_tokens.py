"""Distillation of image-level teacher embeddings into a student's segment tokens (ZeroSeg,
paper 4; the loss form is a reconstruction: the paper's abstract describes the idea, no code).

The frozen image tower of a CLIP-like teacher embeds V views of one image (the whole image and
grid crops), e_v (V, D). The student has K segment tokens, projected into the teacher's space,
z_k = P g_k (K, D). Each view should be explained by *some* token, so per image

    L_min       = Σ_v min_k (1 − cos(z_k, e_v))                 (`min_token_cosine`)
    L_hungarian = Σ_v (1 − cos(z_{π(v)}, e_v)),  π one-to-one   (`hungarian_token_cosine`)
    L_global    = 1 − cos(mean_k z_k, e_whole)                  (`global_token_cosine`)

The min lets one token absorb every view (collapse); the Hungarian variant forbids that by
matching views to distinct tokens (needs K ≥ V; `scipy.optimize.linear_sum_assignment` on the
detached costs, the gradient flows through the matched costs). Views may be masked out (an
empty crop carries no target): ``view_mask`` (B, V) bool, False views add nothing.
Teacher embeddings never carry a gradient.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from ._reduce import check_reduction, reduce


def _check(tokens: torch.Tensor, views: torch.Tensor, view_mask: torch.Tensor | None) -> torch.Tensor:
    if tokens.dim() != 3 or views.dim() != 3 or tokens.shape[0] != views.shape[0] or tokens.shape[2] != views.shape[2]:
        raise ValueError(f"segment-token losses need tokens (B, K, D) and views (B, V, D) with the same B and D; got "
                         f"{tuple(tokens.shape)} and {tuple(views.shape)}")
    if view_mask is None:
        return torch.ones(views.shape[:2], dtype=torch.bool, device=views.device)
    if view_mask.shape != views.shape[:2]:
        raise ValueError(f"view_mask must have shape (B, V) = {tuple(views.shape[:2])}, got {tuple(view_mask.shape)}")
    return view_mask.bool()


def view_token_costs(tokens: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """(B, V, K) costs 1 − cos(z_k, e_v) of tokens (B, K, D) against views (B, V, D) (no gradient to views)."""
    z = F.normalize(tokens.float(), dim=-1, eps=1e-8)
    e = F.normalize(views.detach().float(), dim=-1, eps=1e-8)
    return 1.0 - e @ z.transpose(1, 2)


def min_token_cosine(tokens: torch.Tensor, views: torch.Tensor, view_mask: torch.Tensor | None = None,
                     reduction: str = "mean") -> torch.Tensor:
    """Per image: Σ over the kept views v of min_k (1 − cos(z_k, e_v)); "none" gives (B,)."""
    check_reduction(reduction)
    mask = _check(tokens, views, view_mask)
    best = view_token_costs(tokens, views).min(dim=2).values  # (B, V)
    return reduce((best * mask.float()).sum(dim=1), reduction)


def hungarian_assignment(costs: torch.Tensor, view_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, V) token index matched one-to-one to each view by minimum total cost (−1 for a
    masked view). ``costs`` (B, V, K) with K ≥ the number of kept views."""
    b, v, k = costs.shape
    mask = torch.ones(b, v, dtype=torch.bool) if view_mask is None else view_mask.bool().cpu()
    if v > k:
        raise ValueError(f"Hungarian matching needs at least as many tokens as views, got K={k} tokens and V={v} views")
    out = np.full((b, v), -1, dtype=np.int64)
    values = costs.detach().float().cpu().numpy()
    for i in range(b):
        kept = np.flatnonzero(mask[i].numpy())
        if len(kept):
            rows, cols = linear_sum_assignment(values[i][kept])
            out[i, kept[rows]] = cols
    return torch.from_numpy(out).to(costs.device)


def hungarian_token_cosine(tokens: torch.Tensor, views: torch.Tensor, view_mask: torch.Tensor | None = None,
                           reduction: str = "mean") -> torch.Tensor:
    """Per image: Σ over the kept views v of 1 − cos(z_{π(v)}, e_v), π the one-to-one matching of
    minimum total cost (`hungarian_assignment`); "none" gives (B,)."""
    check_reduction(reduction)
    mask = _check(tokens, views, view_mask)
    costs = view_token_costs(tokens, views)
    match = hungarian_assignment(costs, mask)
    picked = costs.gather(2, match.clamp_min(0).unsqueeze(2))[..., 0]  # (B, V)
    return reduce((picked * mask.float()).sum(dim=1), reduction)


def global_token_cosine(tokens: torch.Tensor, whole: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Per image: 1 − cos(mean_k z_k, e_whole), tokens (B, K, D), whole-image embedding (B, D).
    With K = 1 this is the image-level loss of a student with a single pooled embedding."""
    check_reduction(reduction)
    if tokens.dim() != 3 or whole.dim() != 2 or tokens.shape[0] != whole.shape[0] or tokens.shape[2] != whole.shape[1]:
        raise ValueError(f"global_token_cosine needs tokens (B, K, D) and whole (B, D); got {tuple(tokens.shape)} "
                         f"and {tuple(whole.shape)}")
    mean = tokens.float().mean(dim=1)
    return reduce(1.0 - F.cosine_similarity(mean, whole.detach().float(), dim=-1, eps=1e-8), reduction)


def usage_entropy(choices: torch.Tensor, k: int) -> torch.Tensor:
    """Entropy (nats) of how often each of k tokens was chosen in ``choices`` (any shape of
    token indices, −1 ignored): log k when every token is used equally, 0 when one absorbs all."""
    flat = choices.reshape(-1)
    flat = flat[flat >= 0]
    if not len(flat):
        return torch.zeros(())
    p = torch.bincount(flat, minlength=k).float() / len(flat)
    p = p[p > 0]
    return -(p * p.log()).sum()
