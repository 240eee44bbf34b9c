"""Checks that keep a run's record honest about its result.

A run whose loss stays finite can still have diverged: with a far too large learning rate the
network settles on predicting one class, and the run "finishes" at the accuracy of guessing.
`chance_warning` says so, so the run's status line and log carry a warning instead of a
silent, plausible-looking number.
"""
from __future__ import annotations

import math
from typing import Mapping


def chance_level(num_classes: int) -> float:
    return 1.0 / num_classes


def chance_warning(metrics: Mapping[str, float], num_classes: int | None, samples: int) -> str | None:
    """A warning when the student's final accuracy cannot be told apart from guessing.

    The bound is chance plus three binomial standard errors of an accuracy measured on
    `samples` instances: a student that learned anything clears it, one that predicts a
    single class (accuracy about 1/K on balanced data) does not.
    """
    if not num_classes or num_classes < 2 or samples <= 0:
        return None
    for split in ("test", "val"):
        accuracy = metrics.get(f"{split}/student_acc")
        if accuracy is None or not math.isfinite(accuracy):
            continue
        chance = chance_level(num_classes)
        bound = chance + 3.0 * math.sqrt(chance * (1.0 - chance) / samples)
        if accuracy <= bound:
            return (f"the student's {split} accuracy {accuracy:.4f} is at chance level ({chance:.4f} for "
                    f"{num_classes} classes): training diverged or learned nothing; check the learning "
                    "rate and the loss terms")
        return None
    return None
