"""Student–teacher feature distillation for unsupervised anomaly detection (`stpm`), the base of
the anomaly methods, and their registry.

A frozen teacher, trained for another purpose (here: classifying digits), sees only normal
images while the student, a network of the same shape, learns to reproduce the teacher's
features on them: L = mean_levels mean_p (1 − cos(F_S,p, F_T,p)). On a normal image the two
agree; on an anomalous one the student, never taught there, drifts from the teacher. The
anomaly map is Σ_levels (1 − cos) per position (= ½‖n(F_T) − n(F_S)‖², n = L2 normalisation),
each level upsampled bilinearly to the input size; the image score is the map's maximum.
``stpm`` is the student–teacher baseline without memory (the student reads the image itself,
as in STPM; a reverse-distillation decoder from the teacher's deepest features is not built).

An anomaly method is a `Distiller` with ``anomaly_maps(x) -> (maps (B, H, W), per-sample
columns)``, which the anomaly task (`kd_engine.tasks.anomaly`) calls to score images. It is
registered in ``ANOMALY_METHODS`` (the task's registry) and in ``METHODS`` (name checks, listings).
"""
from __future__ import annotations

from contextlib import ExitStack

import torch
import torch.nn.functional as F

from kd_engine.data.registry import DATASETS
from kd_engine.errors import ConfigError
from kd_engine.losses.anomaly import cosine_distance_map, cosine_feature_kd
from kd_engine.methods.base import Distiller, StepOutput
from kd_engine.methods.registry import METHODS
from kd_engine.models import feature_taps
from kd_engine.models.taps import layer_shapes
from kd_engine.params import check, read_params
from kd_engine.registry import Registry

ANOMALY_METHODS: Registry = Registry("anomaly method")


@METHODS.register("stpm")
@ANOMALY_METHODS.register("stpm")
class FeatureKD(Distiller):
    defaults = {"layers": ["layer1", "layer2"]}

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(student, teacher)  # needs_teacher: kd_engine.run refuses a config without one
        if getattr(DATASETS.get(cfg.data.name, field="data.name"), "task", "classification") != "anomaly":
            raise ConfigError(f"data.name: method {cfg.method} detects anomalies; use an anomaly dataset "
                              f"such as digits_oneclass, got {cfg.data.name!r}")
        self.p = read_params(cfg.distill.params, self.defaults, "distill.params", f"method {cfg.method}")
        self.layers = list(self.p["layers"])
        check(bool(self.layers) and all(isinstance(n, str) for n in self.layers), "distill.params.layers",
              f"a non-empty list of layer names, got {self.layers!r}")
        s_shapes = layer_shapes(student, input_shape, self.layers)
        t_shapes = layer_shapes(teacher, input_shape, self.layers)
        for name in self.layers:
            if len(s_shapes[name]) != 3 or s_shapes[name] != t_shapes[name]:
                raise ConfigError(f"distill.params.layers: {name} gives student {s_shapes[name]} and teacher "
                                  f"{t_shapes[name]}; the cosine score needs equal (C, H, W) maps "
                                  "(give the student the teacher's architecture)")
        self.shapes = s_shapes
        self.input_size = tuple(int(s) for s in input_shape[1:])

    # -- what subclasses change -----------------------------------------------------------------
    def student_hooks(self, stack: ExitStack) -> None:
        """Enter context managers that change the student's forward (a memory read) into ``stack``."""

    def student_features(self, feats: dict) -> dict:
        """The student's features to compare with the teacher's (e.g. before a memory read)."""
        return feats

    def extra_losses(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Losses besides the KD term, and per-sample columns of the last student pass."""
        return {}, {}

    # -- the shared passes -------------------------------------------------------------------------
    def features(self, x: torch.Tensor):
        with torch.no_grad(), feature_taps(self.teacher, self.layers) as t_feats:
            self.teacher(x)
        with ExitStack() as stack:
            self.student_hooks(stack)
            s_feats = stack.enter_context(feature_taps(self.student, self.layers))
            logits = self.student(x)
            s_feats = self.student_features(dict(s_feats))
        return logits, s_feats, t_feats

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        logits, s_feats, t_feats = self.features(x)
        per_level = {n: cosine_feature_kd(s_feats[n], t_feats[n], reduction="none") for n in self.layers}
        kd = torch.stack(list(per_level.values())).mean(0)
        losses, extra = self.extra_losses()
        per_sample = {"student_loss": kd.detach(), **{f"kd_{n}": v.detach() for n, v in per_level.items()}, **extra}
        return StepOutput(logits, {"kd": kd.mean(), **losses}, per_sample)

    @torch.no_grad()
    def anomaly_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(B, H, W) anomaly maps at the input size and per-sample columns (the KD loss, ...)."""
        _, s_feats, t_feats = self.features(x)
        maps = sum(F.interpolate(cosine_distance_map(s_feats[n], t_feats[n])[:, None], size=self.input_size,
                                 mode="bilinear", align_corners=False)[:, 0] for n in self.layers)
        kd = torch.stack([cosine_feature_kd(s_feats[n], t_feats[n], reduction="none") for n in self.layers]).mean(0)
        return maps, {"student_loss": kd, **self.extra_losses()[1]}

    def feature_pairs(self) -> list[tuple[str, str]]:
        return [(n, n) for n in self.layers]
