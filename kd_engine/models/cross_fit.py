"""Cross-fitted teachers: K copies of one teacher architecture, each trained without one fold of
the student's training images, so every training image has a teacher that never saw it.

Why: a teacher scored on the images it trained on has memorised them, so its per-instance loss
is uniformly small and says little about which instances are hard or mislabelled (AID's
weights then sit near 1). With cross-fitting, image ``i`` is scored by teacher ``i mod K``, which
was trained on the other folds only: its loss there is a held-out loss, as on a test image,
while all K teachers together still used every training image.

Fold membership is ``image id mod K`` (``data.holdout_fold: [k, K]`` drops exactly those images
from teacher k's training split). Anything that is not routed per image (evaluation on the
test split, the teacher's layer names and shapes) uses teacher 0: the test images are in no
fold, so any of the K would do. The per-image routing of teacher losses lives where those losses
are computed (``kd_engine.losses.detection_teacher.teacher_losses``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class CrossFitTeacher(nn.Module):
    """K frozen teachers; ``fold_of(ids)`` says which one scores each image."""

    def __init__(self, folds: Sequence[nn.Module]):
        super().__init__()
        if len(folds) < 2:
            raise ValueError(f"cross-fitting needs at least 2 teachers, got {len(folds)}")
        self.folds = nn.ModuleList(folds)
        first = folds[0]
        for name in ("kd_kind", "kd_levels"):  # the detectors' own descriptions (models.detection)
            if hasattr(first, name):
                setattr(self, name, getattr(first, name))

    @property
    def k(self) -> int:
        return len(self.folds)

    @property
    def backbone(self) -> nn.Module:
        return self.folds[0].backbone

    def fold_of(self, ids) -> torch.Tensor:
        """The fold (= the teacher that never saw it) of each image id."""
        return torch.as_tensor(ids, dtype=torch.long) % self.k

    def forward(self, *args, **kwargs):
        return self.folds[0](*args, **kwargs)


__all__ = ["CrossFitTeacher"]
