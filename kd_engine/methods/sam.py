"""SAM: dense prediction from sound with spatially aligned cross-modal distillation (reconstruction).

Distilling a vision teacher into an audio student for dense prediction fails when the student's
features are matched to the teacher's as they are: the teacher's maps are indexed by space
(here: azimuth), the audio student's by time, and resizing one onto the other pairs unrelated
positions (the ``direct_kd`` baseline, `kd_engine.methods.echo_base`). SAM gives the student
learnable spatial queries, one per teacher position, that cross-attend over the audio tokens of
a layer l; the result Ŝ_l is spatially aligned with the teacher by construction, is matched to
the teacher's map after an adapter, and is also consumed by the student's decoder:

    L = L_task + λ · Σ_l mean_{c,a} (adapter_l(Ŝ_l) − sg(T_l))²      (λ = ``weight``, 1 by default)

The queries and the decoder path live in the student (`kd_engine.models.echo_cnn`, ``aligned``
stages, so evaluation needs no method); this method adds the adapters (1×1 convolutions from
the query width to the teacher's) and the matching loss (`kd_engine.losses.alignment`).
``teacher_layers`` pairs, in order, with the student's aligned stages. With ``weight: 0`` the
architecture is unchanged and nothing is distilled: the control that separates the extra
capacity of the query path from the distillation. The aligner design (single-head attention,
learned time embeddings on keys and values, additive fusion into the decoder) is inferred, not
taken from published code. Recorded per room: ``align_<stage>`` and their weighted sum
``align_loss`` (also at evaluation, on the test rooms).
"""
from __future__ import annotations

from annotated_types import Ge
from torch import nn

from kd_engine.errors import ConfigError
from kd_engine.losses.alignment import aligned_feature_mse, multilayer_matching
from kd_engine.methods.echo_base import ECHO_METHODS, EchoDistiller
from kd_engine.methods.registry import METHODS
from kd_engine.models.taps import layer_shapes
from kd_engine.params import Param, read_params


@METHODS.register("sam")
@ECHO_METHODS.register("sam")
class SAM(EchoDistiller):
    needs_teacher = True
    defaults = {"teacher_layers": ["layer2"], "weight": Param(1.0, Ge(0))}

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(cfg, student, teacher, input_shape)
        self.p = read_params(cfg.distill.params, self.defaults, "distill.params", f"method {cfg.method}")
        self.stages = list(getattr(student, "aligned", []))
        self.teacher_layers = list(self.p["teacher_layers"])
        if not self.stages or len(self.stages) != len(self.teacher_layers):
            raise ConfigError(f"distill.params.teacher_layers: one teacher layer per aligned student stage "
                              f"(student.params.aligned = {self.stages}), got {self.teacher_layers!r}")
        self.student_layers = [f"aligners.{s}.out" for s in self.stages]
        s_shapes = layer_shapes(student, input_shape, self.student_layers, "student.params.aligned")
        t_shapes = layer_shapes(teacher, input_shape, self.teacher_layers, "distill.params.teacher_layers")
        self.adapters = nn.ModuleDict()
        for stage, s_name, t_name in zip(self.stages, self.student_layers, self.teacher_layers):
            (c_s, a_s), t_shape = s_shapes[s_name], t_shapes[t_name]
            if len(t_shape) != 2 or t_shape[1] != a_s:
                raise ConfigError(f"distill.params.teacher_layers: {t_name} gives {t_shape}; it must be a "
                                  f"(C, A) map over the student's {a_s} azimuth queries")
            self.adapters[stage] = nn.Conv1d(c_s, t_shape[0], 1)

    def distill(self, s_feats, t_feats):
        adapted = [self.adapters[stage](s_feats[name]) for stage, name in zip(self.stages, self.student_layers)]
        targets = [t_feats[name] for name in self.teacher_layers]
        total = multilayer_matching(adapted, targets, reduction="none")
        values = {"align_loss": total.detach()}
        values.update({f"align_{stage}": aligned_feature_mse(s.detach(), t, reduction="none")
                       for stage, s, t in zip(self.stages, adapted, targets)})
        return {"sam": self.p["weight"] * total.mean()}, values
