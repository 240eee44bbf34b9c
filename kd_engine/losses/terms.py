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
``kd_engine.losses.standardize``), added in one place when the term is registered.

A loss registers where it is defined, with ``@term("name", "inputs")`` from
``kd_engine.losses.term_registry``; importing this module imports every module that does.
"""
from __future__ import annotations

import kd_engine.losses  # noqa: F401  (the loss functions' modules register their terms)
from kd_engine.losses import crd_memory, term_modules  # noqa: F401  (the ``module`` terms)
from kd_engine.losses.term_modules import TermBatch, TermSetup
from kd_engine.losses.term_registry import INPUT_KINDS, LOSSES, TermSpec, register_term, term

__all__ = ["INPUT_KINDS", "LOSSES", "TermBatch", "TermSetup", "TermSpec", "register_term", "term"]
