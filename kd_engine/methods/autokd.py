"""Auto-KD's distiller space (paper 3, a reconstruction): L = CE + λ·d(φ(A(F_S)), φ(F_T)).

One point of the space is `distill.params = {transform, distance, temperature, weight}` plus the
feature layers; `kd_engine.search` searches over it. The teacher's features and logits come either
from the teacher itself or from a teacher features file (`teacher_features`: a directory written once per
search by `kd_engine.search.runner.write_teacher_features`, memory-mapped, keyed by input content), so proxy runs
of a search never run the teacher.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from annotated_types import Gt
from torch import nn

from kd_engine.errors import ConfigError
from kd_engine.losses.logit import cs_divergence, kd
from kd_engine.methods.base import Distiller, StepOutput
from kd_engine.methods.registry import METHODS
from kd_engine.methods.standard import make_adapter
from kd_engine.models import feature_taps, layer_shapes
from kd_engine.params import Param, read_params

TRANSFORMS = ("identity", "gap", "attention", "channel_softmax", "mask", "pool124")
DISTANCES = ("mse", "l1", "cosine", "kl", "pearson", "cs")
PARAMS = {"transform": "identity", "distance": "mse", "temperature": Param(1.0, Gt(0)),
          "weight": Param(1.0, Gt(0)), "student_layer": "layer2", "teacher_layer": "layer2",
          "teacher_features": Param(None, kind=str | None)}


def transform(f: torch.Tensor, name: str, temperature: float = 1.0,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """φ: a (B, C, H, W) map -> (B, D) vectors. `mask` zeroes a random half of the elements; call
    it once on the concatenated (student, teacher) pair so both sides share the mask."""
    b, c = f.shape[:2]
    if name == "identity":
        return f.flatten(1)
    if name == "gap":
        return f.mean(dim=(2, 3))
    if name == "attention":  # channel mean of squares, L2-normalised over positions
        return F.normalize(f.pow(2).mean(dim=1).flatten(1), dim=1)
    if name == "channel_softmax":  # a distribution over positions per channel
        return F.softmax(f.flatten(2) / temperature, dim=2).flatten(1)
    if name == "mask":
        keep = torch.rand(f[: b // 2].shape, generator=generator, device=f.device) < 0.5
        return (f * keep.repeat(2, *[1] * (f.dim() - 1)).to(f.dtype)).flatten(1)
    if name == "pool124":
        return torch.cat([F.adaptive_avg_pool2d(f, s).flatten(1) for s in (1, 2, 4)], dim=1)
    raise ValueError(f"unknown transform {name!r} (allowed: {', '.join(TRANSFORMS)})")


def distance(s: torch.Tensor, t: torch.Tensor, name: str, temperature: float = 1.0) -> torch.Tensor:
    """d: per-sample distance (B,) between student and teacher vectors; the teacher is detached."""
    t = t.detach()
    if name == "mse":
        return (s - t).pow(2).mean(dim=1)
    if name == "l1":
        return (s - t).abs().mean(dim=1)
    if name == "cosine":
        return 1.0 - F.cosine_similarity(s, t, dim=1, eps=1e-8)
    if name == "kl":  # T²·KL(softmax(t/T) ‖ softmax(s/T)) over the vector's entries
        return kd(s, t, temperature=temperature, reduction="none")
    if name == "pearson":
        return 1.0 - F.cosine_similarity(s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True),
                                         dim=1, eps=1e-8)
    if name == "cs":
        return cs_divergence(s, t, temperature=temperature, reduction="none")
    raise ValueError(f"unknown distance {name!r} (allowed: {', '.join(DISTANCES)})")


class TeacherFeatures:
    """Teacher logits and features of the proxy training set, memory-mapped, looked up by the
    input's bytes (the teacher is a function of its input, so duplicates share one entry; valid
    only without augmentation, which the digits loop does not use)."""

    def __init__(self, directory: str, layer: str):
        import json
        from pathlib import Path

        import numpy as np

        root = Path(directory)
        meta_path = root / "meta.json"
        if not meta_path.is_file():
            raise ConfigError(f"distill.params.teacher_features: {root} holds no teacher features file (no meta.json)")
        meta = json.loads(meta_path.read_text())
        if meta.get("layer") != layer:
            raise ConfigError(f"distill.params.teacher_features: cached layer {meta.get('layer')!r}, "
                              f"but teacher_layer is {layer!r}")
        inputs = np.load(root / "inputs.npy", mmap_mode="r")
        self.logits = np.load(root / "logits.npy", mmap_mode="r")
        self.features = np.load(root / "features.npy", mmap_mode="r")
        self.index = {inputs[i].tobytes(): i for i in range(len(inputs))}
        self.feature_shape = tuple(self.features.shape[1:])

    def lookup(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = x.detach().cpu().float().flatten(1).numpy()
        try:
            where = [self.index[row.tobytes()] for row in rows]
        except KeyError:
            raise ConfigError("distill.params.teacher_features: an input is not in the teacher features file "
                              "(was it written for another split or dataset?)") from None
        take = lambda array: torch.from_numpy(array[sorted(set(where))]).to(x.device)  # noqa: E731
        order = {j: n for n, j in enumerate(sorted(set(where)))}
        pick = torch.tensor([order[j] for j in where], device=x.device)
        return take(self.logits)[pick], take(self.features)[pick]


@METHODS.register("autokd")
class AutoKD(Distiller):
    needs_teacher = True
    # a search over this method writes the teacher's features once and its trials read them
    # (distill.params.teacher_features) instead of running the teacher
    uses_teacher_features = True

    @classmethod
    def requires_teacher(cls, cfg) -> bool:
        return not (cfg.distill.params or {}).get("teacher_features")

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(student, teacher)
        p = read_params(cfg.distill.params, PARAMS, "distill.params", "method autokd")
        for key, allowed in (("transform", TRANSFORMS), ("distance", DISTANCES)):
            if p[key] not in allowed:
                raise ConfigError(f"distill.params.{key}: {p[key]!r} is not one of {', '.join(allowed)}")
        self.transform_name, self.distance_name = p["transform"], p["distance"]
        self.temperature, self.weight = float(p["temperature"]), float(p["weight"])
        self.s_layer, self.t_layer = p["student_layer"], p["teacher_layer"]
        self.cache = TeacherFeatures(p["teacher_features"], self.t_layer) if p["teacher_features"] else None
        s_shape = layer_shapes(student, input_shape, [self.s_layer])[self.s_layer]
        t_shape = (self.cache.feature_shape if self.cache is not None
                   else layer_shapes(teacher, input_shape, [self.t_layer])[self.t_layer])
        self.adapter = make_adapter("conv1x1", tuple(s_shape), tuple(t_shape), "distill.params",
                                    f"student {self.s_layer!r} and teacher {self.t_layer!r}")
        self.task_weight = cfg.distill.task_weight

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        if self.cache is not None and (self.training or self.teacher is None):
            t_logits, t_feat = self.cache.lookup(x)
        else:
            with torch.no_grad(), feature_taps(self.teacher, [self.t_layer]) as taps:
                t_logits = self.teacher(x)
            t_feat = taps[self.t_layer]
        with feature_taps(self.student, [self.s_layer]) as taps:
            s_logits = self.student(x)
        s_feat = self.adapter(taps[self.s_layer].float())
        both = transform(torch.cat([s_feat, t_feat.float().detach()]), self.transform_name, self.temperature)
        s_vec, t_vec = both.chunk(2)
        term = distance(s_vec, t_vec, self.distance_name, self.temperature)
        student_loss = F.cross_entropy(s_logits.float(), y, reduction="none")
        per_sample = {"student_loss": student_loss.detach(), "term_autokd": term.detach(),
                      "distill_loss": (self.weight * term).detach(),
                      "teacher_loss": F.cross_entropy(t_logits.float(), y, reduction="none")}
        losses = {"task": self.task_weight * student_loss.mean(), "distill": self.weight * term.mean()}
        return StepOutput(s_logits, losses, per_sample, t_logits.float())
