"""Box-refinement methods (task ``box_refine``): what they return and their registry.

A box refiner is given images and one inaccurate box per object (with its class) and decides a
pseudo box for each object. Besides ``forward(x, noisy, labels, owner) -> StepOutput`` (training;
``owner`` (M,) is each object's image index in the batch, ``StepOutput.logits`` holds the pseudo
boxes (M, 4) and ``per_sample`` one value per object), it offers
``refine(x, noisy, labels, owner, generator) -> Decisions`` in eval mode, which the task calls
to judge the pseudo boxes against the true ones (the method never sees those). A refiner is
registered in ``BOX_REFINE_METHODS`` (the task's registry) and in ``METHODS`` (name checks,
listings).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kd_engine.registry import Registry

BOX_REFINE_METHODS: Registry = Registry("box refinement method")


@dataclass
class Decisions:
    """What a refiner decided per object (M objects, P proposals a bag)."""

    proposals: torch.Tensor  # (M, P, 4) the bag as drawn around the noisy box
    bag: torch.Tensor  # (M, P, 4) the bag that was scored (the regressed proposals under SPSD)
    weights: torch.Tensor  # (M, P) the merge weights used (MIL c_p[y]·s_p, × IoU confidence under SISD)
    confidence: torch.Tensor | None  # (M, P) min-max normalised IoU confidence, or None
    pseudo: torch.Tensor  # (M, 4) the pseudo boxes
    chosen: torch.Tensor  # (M, k) indices of the merged proposals

    def columns(self) -> dict[str, torch.Tensor]:
        """Per-object columns for the run store: the pseudo box, the largest normalised weight of
        the bag, the weight mass of the merged top-k and (with SISD) their mean confidence."""
        share = self.weights / self.weights.sum(1, keepdim=True).clamp_min(1e-12)
        out = {f"pseudo_{c}": self.pseudo[:, i] for i, c in enumerate(("x0", "y0", "x1", "y1"))}
        out["weight_max"] = share.max(1).values
        out["topk_mass"] = share.gather(1, self.chosen).sum(1)
        if self.confidence is not None:
            out["confidence_topk"] = self.confidence.gather(1, self.chosen).mean(1)
        return {k: v.detach() for k, v in out.items()}
