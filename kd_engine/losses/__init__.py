"""Distillation losses: pure functions with ``reduction="mean"|"sum"|"none"``.

``"none"`` returns one value per sample (shape (B,)); ``"mean"`` is the batch mean of those and
``"sum"`` their sum. Teacher inputs are targets and are detached inside. Batch-level losses
(``dist``, ``rkd``) carry ``batch_level = True`` and define their per-sample form in their
docstrings so that the mean of the per-sample values equals the batch loss.
"""

from ._reduce import REDUCTIONS, reduce
from .affinity import relation_loss, relation_matrix
from .binary import binary_kd
from .dense import channel_kd, pixel_kd, pixel_kl_map
from .feature import attention_transfer, fitnet
from .logit import cs_divergence, dist, dkd, dkd_parts, kd
from .relation import rkd

__all__ = [
    "REDUCTIONS",
    "attention_transfer",
    "binary_kd",
    "channel_kd",
    "cs_divergence",
    "dist",
    "dkd",
    "dkd_parts",
    "fitnet",
    "kd",
    "pixel_kd",
    "pixel_kl_map",
    "reduce",
    "relation_loss",
    "relation_matrix",
    "rkd",
]
