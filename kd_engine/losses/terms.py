"""Registry of distillation terms a config can name, with what each term takes as input.

A term's kind tells the distiller what to feed it:
- ``logits``: (student_logits, teacher_logits);
- ``logits_target``: (student_logits, teacher_logits, target);
- ``features``: (student_feature, teacher_feature) taken at configured layers;
- ``adapted_features``: (student_feature, teacher_feature, adapter): the term owns an adapter
  from student to teacher width (``adapter: conv1x1`` or ``linear`` in the config);
- ``embedding``: (student_embedding, teacher_embedding) taken at configured (or embedding) layers;
- ``maps``: (student_feature, teacher_feature) as tapped, any sizes (the loss pools or checks them);
- ``module``: a ``kd_engine.losses.term_modules.ModuleTerm`` class the term owns one instance of
  (trainable parts, state, several layers, instance ids); see that module.

Every ``logits``/``logits_target`` term also takes ``standardize: true`` (logit standardisation,
``kd_engine.losses.standardize``), added here in one place when the term is registered.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from kd_engine.errors import ConfigError
from kd_engine.losses import (attention_transfer, binary_kd, cc, channel_kd, cs_divergence, dist, dkd, fitnet,
                              kd, nst, pixel_kd, pkt, relation_loss, rkd, similarity_preserving)
from kd_engine.losses.crd_memory import CRDTerm
from kd_engine.losses.standardize import with_standardize
from kd_engine.losses.term_modules import KDSVDTerm, OFDTerm, ReviewKDTerm, TermBatch, TermSetup, VIDTerm
from kd_engine.params import check_call
from kd_engine.registry import Registry

INPUT_KINDS = ("logits", "logits_target", "features", "adapted_features", "embedding", "maps", "module")
_POSITIONAL = {"logits": 2, "logits_target": 3, "features": 2, "adapted_features": 3, "embedding": 2,
               "maps": 2, "module": 1}


@dataclass(frozen=True)
class TermSpec:
    fn: Callable[..., Any]
    inputs: str

    @property
    def uses_layers(self) -> bool:
        return self.inputs in ("features", "adapted_features", "embedding", "maps", "module")

    @property
    def batch_level(self) -> bool:
        return bool(getattr(self.fn, "batch_level", False))

    def check_params(self, params: dict[str, Any], field: str) -> dict[str, Any]:
        """Unknown names and values of the wrong kind or out of the range the loss's signature
        declares raise one ConfigError line; returns the params converted to their kinds."""
        return check_call(self.fn, params, field, skip=_POSITIONAL[self.inputs], owner="loss",
                          exclude=("reduction",))

    def check_shapes(self, s_shape: tuple, t_shape: tuple, field: str, layers: str) -> None:
        """Build-time shape check of the kinds defined here (``maps``: (C, H, W) on both sides)."""
        if self.inputs == "maps" and (len(s_shape) != 3 or len(t_shape) != 3):
            raise ConfigError(f"{field}: the loss needs (C, H, W) maps; {layers} have shapes "
                              f"{s_shape} and {t_shape}")

    def build_module(self, setup: TermSetup, params: dict[str, Any]):
        """The owned module of a ``module`` term (``None`` for the other kinds); a parameter value
        the module cannot use is one ConfigError line naming the term's params."""
        if self.inputs != "module":
            return None
        try:
            return self.fn(setup, **params)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{setup.field}.params: invalid value for loss {setup.loss}: {exc}") from None


LOSSES: Registry[TermSpec] = Registry("distillation loss")


def register_term(name: str, fn: Callable[..., Any], inputs: str) -> TermSpec:
    if inputs not in INPUT_KINDS:
        raise ValueError(f"term {name}: inputs must be one of {INPUT_KINDS}")
    if inputs in ("logits", "logits_target"):
        fn = with_standardize(fn)
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
register_term("pkt", pkt, "embedding")
register_term("similarity_preserving", similarity_preserving, "embedding")
register_term("cc", cc, "embedding")
register_term("nst", nst, "maps")
register_term("vid", VIDTerm, "module")
register_term("ofd", OFDTerm, "module")
register_term("kdsvd", KDSVDTerm, "module")
register_term("reviewkd", ReviewKDTerm, "module")
register_term("crd", CRDTerm, "module")

__all__ = ["INPUT_KINDS", "LOSSES", "TermBatch", "TermSetup", "TermSpec", "register_term"]
