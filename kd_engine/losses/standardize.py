"""Logit standardisation (Sun et al., CVPR 2024, "Logit Standardization in Knowledge Distillation").

Classical KD asks the student to match the teacher's logits up to a shared temperature, which
also asks it to match their range: a small student often cannot. Z-scoring each sample's logits
before the loss keeps only their relative shape: Z(z) = (z − mean(z)) / σ(z), with σ the
population standard deviation over the classes (the paper's definition; the authors' release
uses the unbiased estimate, a factor √(K/(K−1)) apart). The loss's own temperature then acts as
the paper's base temperature. Every ``logits``/``logits_target`` term takes it as the term option
``standardize: true``, applied here in one place (see ``with_standardize``).
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable

import torch


def standardize_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score logits over their class dimension (dim 1: (B, C), or dense (B, C, H, W) per position);
    a constant vector becomes zeros."""
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True, correction=0)
    return (logits - mean) / (std + eps)


def with_standardize(fn: Callable) -> Callable:
    """``fn(student_logits, teacher_logits, ...)`` with an added keyword ``standardize=False``.

    When true, both logit tensors are z-scored (``standardize_logits``) before ``fn`` sees them.
    The wrapper's signature lists the new option, so a term's parameter check accepts it."""
    @functools.wraps(fn)
    def wrapped(student_logits, teacher_logits, *args, standardize: bool = False, **kwargs):
        if standardize:
            student_logits = standardize_logits(student_logits)
            teacher_logits = standardize_logits(teacher_logits)
        return fn(student_logits, teacher_logits, *args, **kwargs)

    signature = inspect.signature(fn, eval_str=True)  # real annotations: range checks read them
    option = inspect.Parameter("standardize", inspect.Parameter.KEYWORD_ONLY, default=False,
                               annotation=bool)
    wrapped.__signature__ = signature.replace(parameters=[*signature.parameters.values(), option])
    return wrapped
