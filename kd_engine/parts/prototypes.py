"""Class prototypes and the class assignment they are built on (WCBC-IOD, paper 2; reusable by
any method that compares class structure between two models).

- `assign_classes`: which class each instance counts for. An instance with a (new-task) label
  keeps it; an unlabelled one (the task calls it background) takes the teacher's prediction when
  the teacher names a known class with probability ≥ ``threshold``, else none (−1). ω_i, the
  teacher's confidence in a known class, comes with it. Teacher and student prototypes must use
  the *same* assignment, or their distance matrices compare different groups.
- `class_prototypes`: per-class means of any per-instance values (features: μ_c; soft
  predictions: π_c) and the counts; a class with fewer than ``min_count`` instances in the batch
  is marked absent (batch prototypes of one instance are noise).
- `matrix_correlation`: Pearson correlation of two distance matrices' upper triangles
  (SciPy), the agreement of two models' class structures.
The distance matrices themselves are `kd_engine.losses.class_structure`'s.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import pearsonr

UNASSIGNED, GROUND_TRUTH, TEACHER = 0, 1, 2
SOURCE_NAMES = {UNASSIGNED: "none", GROUND_TRUTH: "label", TEACHER: "teacher"}


@dataclass
class Assignment:
    classes: torch.Tensor  # (N,) int64 class per instance, −1 for none
    source: torch.Tensor  # (N,) int64: UNASSIGNED, GROUND_TRUTH or TEACHER
    confidence: torch.Tensor  # (N,) ω_i: the teacher's probability of its most likely known class


def assign_classes(labels: torch.Tensor, teacher_probs: torch.Tensor, known: list[int], background: int,
                   threshold: float = 0.5) -> Assignment:
    """``labels`` (N,) task labels (``background`` = unlabelled); ``teacher_probs`` (N, C) the
    teacher's class probabilities; ``known`` the classes the teacher was taught (background
    excluded). Labelled instances keep their label; unlabelled ones take the teacher's most likely
    known class when its probability is ≥ ``threshold``."""
    known_index = torch.as_tensor(known, device=teacher_probs.device, dtype=torch.long)
    confidence, best = teacher_probs[:, known_index].max(1)
    teacher_class = known_index[best]
    labelled = labels != background
    confident = (~labelled) & (confidence >= threshold)
    classes = torch.where(labelled, labels, torch.where(confident, teacher_class, torch.full_like(labels, -1)))
    source = torch.where(labelled, torch.full_like(labels, GROUND_TRUTH),
                         torch.where(confident, torch.full_like(labels, TEACHER), torch.full_like(labels, UNASSIGNED)))
    return Assignment(classes, source, confidence)


def class_prototypes(values: torch.Tensor, classes: torch.Tensor, num_classes: int,
                     min_count: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(num_classes, D) per-class means of ``values`` (N, D) over the instances with class c in
    ``classes`` (N,) (−1: ignored), and a (num_classes,) bool mask of classes with at least
    ``min_count`` instances (an absent class's row is zero)."""
    keep = (classes >= 0) & (classes < num_classes)
    values, classes = values[keep], classes[keep]
    sums = values.new_zeros(num_classes, values.shape[1]).index_add(0, classes, values)
    counts = torch.bincount(classes, minlength=num_classes).to(values.dtype)
    present = counts >= min_count
    return sums / counts.clamp_min(1).unsqueeze(1), present


def matrix_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r between the strict upper triangles of two K×K matrices (NaN when K < 3 or one
    side is constant)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    upper = np.triu_indices(a.shape[0], k=1)
    x, y = a[upper], b[upper]
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(pearsonr(x, y)[0])
