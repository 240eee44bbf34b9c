"""Distillation losses: pure functions with ``reduction="mean"|"sum"|"none"``.

``"none"`` returns one value per sample (shape (B,)); ``"mean"`` is the batch mean of those and
``"sum"`` their sum. Teacher inputs are targets and are detached inside. Batch-level losses
(``dist``, ``rkd``, ``pkt``, ``similarity_preserving``, ``cc``) carry ``batch_level = True`` and
define their per-sample form in their docstrings so that the mean of the per-sample values
equals the batch loss. Losses with trainable parts (VID, OFD, CRD, ReviewKD) are pure functions
of the transformed tensors here; the parts themselves are in ``term_modules``/``crd_memory``.
"""

from ._reduce import REDUCTIONS, reduce
from .affinity import relation_loss, relation_matrix
from .batch_similarity import cc, pkt, similarity_preserving
from .bckd import binary_discrepancy_kd, giou_box_kd, softmax_kd_dense
from .binary import binary_kd
from .dense import channel_cs, channel_kd, pixel_cs, pixel_cs_map, pixel_kd, pixel_kl_map
from .feature import attention_transfer, fitnet
from .feature_kernel import kdsvd, nst
from .learned import crd, hcl, nce, ofd, ofd_margin, vid
from .logit import cs_divergence, dist, dkd, dkd_parts, kd
from .relation import rkd
from .standardize import standardize_logits

__all__ = [
    "REDUCTIONS",
    "attention_transfer",
    "binary_kd",
    "cc",
    "crd",
    "channel_cs",
    "channel_kd",
    "cs_divergence",
    "dist",
    "dkd",
    "dkd_parts",
    "fitnet",
    "hcl",
    "kd",
    "kdsvd",
    "nce",
    "nst",
    "ofd",
    "ofd_margin",
    "pkt",
    "pixel_cs",
    "pixel_cs_map",
    "pixel_kd",
    "pixel_kl_map",
    "reduce",
    "relation_loss",
    "relation_matrix",
    "rkd",
    "similarity_preserving",
    "standardize_logits",
    "vid",
]
