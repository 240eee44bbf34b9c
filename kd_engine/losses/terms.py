"""Registry of distillation terms a config can name, with what each term takes as input.

A term's kind tells the distiller what to feed it:
- ``logits``: (student_logits, teacher_logits);
- ``logits_target``: (student_logits, teacher_logits, target);
- ``features``: (student_feature, teacher_feature) taken at configured layers;
- ``adapted_features``: (student_feature, teacher_feature, adapter): the term owns an adapter
  from student to teacher width (``adapter: conv1x1`` or ``linear`` in the config);
- ``embedding``: (student_embedding, teacher_embedding) taken at configured (or embedding) layers.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from kd_engine.losses import (attention_transfer, binary_kd, channel_kd, cs_divergence, dist, dkd, fitnet,
                              kd, pixel_kd, relation_loss, rkd)
from kd_engine.params import reject_unknown
from kd_engine.registry import Registry

INPUT_KINDS = ("logits", "logits_target", "features", "adapted_features", "embedding")


@dataclass(frozen=True)
class TermSpec:
    fn: Callable[..., Any]
    inputs: str

    @property
    def uses_layers(self) -> bool:
        return self.inputs in ("features", "adapted_features", "embedding")

    @property
    def batch_level(self) -> bool:
        return bool(getattr(self.fn, "batch_level", False))

    def check_params(self, params: dict[str, Any], field: str) -> None:
        positional = {"logits": 2, "logits_target": 3, "features": 2, "adapted_features": 3,
                      "embedding": 2}[self.inputs]
        names = list(inspect.signature(self.fn).parameters)[positional:]
        allowed = [n for n in names if n != "reduction"]
        reject_unknown(params, allowed, field, "loss")


LOSSES: Registry[TermSpec] = Registry("distillation loss")


def register_term(name: str, fn: Callable[..., Any], inputs: str) -> TermSpec:
    if inputs not in INPUT_KINDS:
        raise ValueError(f"term {name}: inputs must be one of {INPUT_KINDS}")
    return LOSSES.register(name)(TermSpec(fn, inputs))


register_term("kd", kd, "logits")
register_term("dkd", dkd, "logits_target")
register_term("dist", dist, "logits")
register_term("cs", cs_divergence, "logits")
register_term("attention_transfer", attention_transfer, "features")
register_term("fitnet", fitnet, "adapted_features")
register_term("rkd", rkd, "embedding")
register_term("binary_kd", binary_kd, "logits")
register_term("relation", relation_loss, "embedding")
register_term("pixel_kd", pixel_kd, "logits")  # dense logits (B, C, H, W)
register_term("channel_kd", channel_kd, "logits")  # dense logits (B, C, H, W)
