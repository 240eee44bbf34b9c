"""Relation / affinity losses: build a B×B relation matrix R(X) per side and compare them.

One builder and one comparison serve the relation-distilling papers (class-prototype distances,
Pearson correlations, affinity rows, normalised-distance Huber): they differ only in ``kind``,
``distance`` and the group mask.
"""

from __future__ import annotations

from typing import Annotated, Literal

from annotated_types import Gt
import torch
import torch.nn.functional as F

from ._reduce import check_reduction, reduce
from kd_engine.losses.term_registry import term

KINDS = ("cosine", "distance", "pearson")
DISTANCES = ("mse", "huber", "kl_rows")


def relation_matrix(x: torch.Tensor, kind: str = "cosine", normalize: bool = True,
                    eps: float = 1e-12) -> torch.Tensor:
    """B×B relation matrix of the rows of ``x`` (B, D); extra dims are flattened.

    - ``cosine``: cosine similarity between samples;
    - ``distance``: Euclidean distance, exact zero diagonal; with ``normalize`` it is divided by
      the mean positive off-diagonal distance (RKD / L2D) so the two sides' scales need not match;
    - ``pearson``: Pearson correlation between samples (each row centred over its features,
      then cosine). ``normalize`` only affects ``distance``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    x = x.flatten(1)
    if kind == "pearson":
        x = x - x.mean(dim=1, keepdim=True)
    if kind in ("cosine", "pearson"):
        xn = F.normalize(x, p=2, dim=1, eps=eps)
        return xn @ xn.t()
    sq = x.pow(2).sum(dim=1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * x @ x.t()).clamp_min(eps)
    d = d2.sqrt() * (1.0 - torch.eye(x.size(0), dtype=x.dtype, device=x.device))
    if normalize:
        positive = d[d > 0]
        scale = positive.mean() if positive.numel() else d.new_tensor(1.0)
        d = d / scale.clamp_min(eps)
    return d


def _pair_mask(group_mask, b: int, device) -> torch.Tensor | None:
    """(B,) group ids become a same-group mask; a (B, B) mask is used as given (float)."""
    if group_mask is None:
        return None
    m = torch.as_tensor(group_mask, device=device)
    if m.dim() == 1:
        m = m.unsqueeze(0) == m.unsqueeze(1)
    if m.shape != (b, b):
        raise ValueError(f"group_mask must be (B,) group ids or (B, B); got {tuple(m.shape)}")
    return m.float()


@term("relation", "embedding")
def relation_loss(student, teacher, kind: Literal["cosine", "distance", "pearson"] = "cosine",
                  distance: Literal["mse", "huber", "kl_rows"] = "mse",
                  normalize: bool = True, temperature: Annotated[float, Gt(0)] = 1.0, group_mask=None,
                  reduction: str = "mean"):
    """Compare the student's relation matrix with the teacher's (teacher side detached).

    ``distance``: ``mse`` / ``huber`` (smooth-L1, β = 1) entrywise, or ``kl_rows``: per row i,
    KL(softmax(R_t[i]/τ) ‖ softmax(R_s[i]/τ)) over j ≠ i (the trivial self-relation is left out).
    ``group_mask`` ((B, B) weights, or (B,) group ids meaning "same group only") zeroes the
    masked pairs; for ``kl_rows`` they are removed from the row softmax.

    Batch-level. Per-sample form ("none") of sample i: for mse/huber the mean over its row of
    the (masked) entrywise terms, dividing by B (masked pairs count as zeros, no
    renormalisation, so an all-zero mask gives 0, not NaN); for kl_rows the KL of its row.
    The batch loss ("mean") is the mean of these, exactly.
    """
    check_reduction(reduction)
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    if student.size(0) != teacher.size(0):
        raise ValueError("relation_loss needs the same batch size for student and teacher; got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    rs = relation_matrix(student, kind, normalize)
    rt = relation_matrix(teacher.detach(), kind, normalize)
    b = rs.size(0)
    mask = _pair_mask(group_mask, b, rs.device)
    if distance == "kl_rows":
        valid = ~torch.eye(b, dtype=torch.bool, device=rs.device)
        if mask is not None:
            valid = valid & (mask > 0)
        big = torch.finfo(rs.dtype).max / 4  # finite "-inf": masked p is exactly 0, no NaN
        log_q = F.log_softmax((rs / temperature).masked_fill(~valid, -big), dim=1)
        log_p = F.log_softmax((rt / temperature).masked_fill(~valid, -big), dim=1)
        per_pair = torch.where(valid, log_p.exp() * (log_p - log_q), torch.zeros_like(rs))
        per_sample = per_pair.sum(dim=1)
    else:
        if distance == "mse":
            per_pair = (rs - rt).pow(2)
        else:
            per_pair = F.smooth_l1_loss(rs, rt, reduction="none", beta=1.0)
        if mask is not None:
            per_pair = per_pair * mask
        per_sample = per_pair.mean(dim=1)
    return reduce(per_sample, reduction)


relation_loss.batch_level = True
