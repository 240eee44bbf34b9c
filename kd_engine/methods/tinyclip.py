"""TinyCLIP (Wu et al., ICCV 2023): distil a CLIP model into a smaller two-tower student by
affinity mimicking and weight inheritance.

- **Affinity mimicking.** Within a batch the student reproduces the teacher's image→text and
  text→image similarity distributions: per pair, the row-wise soft cross-entropy of the
  student's affinity rows against the softmax of the teacher's, both directions averaged, at one
  logit scale for both models (``scale``: 50 by default, as the public script passes; the digit
  config uses the teacher's own InfoNCE scale, 20; logged in the run's metadata),
  `kd_engine.losses.image_text.affinity_soft_ce`. With α = 1 (the default) the hard InfoNCE term
  is off, as in the public code.
- **Weight inheritance** (``inherit: true``). Before training, the student's towers take a
  subset of the teacher's: blocks 0, step, 2·step, … (step = ⌊depth_T / depth_S⌋), the leading
  slice of every tensor, fused qkv reshaped by heads (`kd_engine.parts.inheritance`). The
  student's head counts must keep the teacher's head dimension for the slices to be whole heads.

Not built: the automatic (learnable-mask) inheritance and the progressive multi-stage shrinking.
The run's metadata lists which teacher tensor each student tensor came from (``inherited``).
"""
from __future__ import annotations

from kd_engine.errors import ConfigError
from kd_engine.losses.image_text import affinity_soft_ce
from kd_engine.methods.image_text_base import IMAGE_TEXT_METHODS, TEACHER_DEFAULTS, ImageTextDistiller
from kd_engine.methods.registry import METHODS
from kd_engine.parts.inheritance import inherit


@METHODS.register("tinyclip")
@IMAGE_TEXT_METHODS.register("tinyclip")
class TinyCLIP(ImageTextDistiller):
    defaults: dict = {**TEACHER_DEFAULTS, "inherit": False}

    def setup(self, cfg) -> None:
        self.inherited: dict[str, str] = {}
        if not self.p["inherit"]:
            return
        heads = {}
        for role, model in (("student", self.student), ("teacher", self.teacher)):
            heads[role] = {"image.": model.image.blocks[0].attn.heads, "text.": model.text.blocks[0].attn.heads}
        try:
            self.inherited = inherit(self.student, self.teacher, heads["student"], heads["teacher"])
        except ValueError as e:
            raise ConfigError(f"student.params: weight inheritance from the teacher failed: {e}") from None

    def distill(self, s_img, s_txt, t_img, t_txt):
        return affinity_soft_ce(s_img, s_txt, t_img, t_txt, self.p["scale"], reduction="none"), {}

    def describe(self) -> dict:
        return {**super().describe(), "inherit": self.p["inherit"], "inherited": self.inherited}
