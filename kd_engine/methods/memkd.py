"""MemKD (ICCV 2023): memory-guided distillation for unsupervised anomaly detection.

A student that imitates its teacher on normal images also learns to imitate it on anomalous
ones: it generalises too well, and the anomaly map goes quiet where it should light up (the
paper calls this normality forgetting). MemKD puts a normality memory inside the student: after
each chosen level, a key–value memory (`kd_engine.parts.kv_memory`) recalls stored normal
patterns r from the student's feature x, and the next layer receives fuse(concat(x, r)), so what
the student produces downstream is pulled toward normal patterns even on an anomaly. The
memory is taught what "normal" looks like on a few fixed normal exemplars E (drawn from the
training images by the seed) through the teacher's features:

    L = L_KD + nm_weight · L_NM + orth_weight · L_ORTH
    L_NM   = ½·mean_p ‖n(F_T(E)_p) − n(mem(F_T(E))_p)‖²   (recall the teacher's normal features)
    L_ORTH = Σ_memories Σ_{i,j} cos(K_i, V_j) / L²         (keys and values kept apart)

L_KD and the anomaly map are the baseline's (`kd_engine.methods.anomaly_base`), taken on the
student's features *before* each memory read. Keys and values are parameters, so L_NM and
L_ORTH train them. With nm_weight = orth_weight = 0 the memory is extra capacity trained only
through L_KD (the control that separates "more parameters" from "taught normality").
Recorded per instance: ``memory_entropy`` (the mean entropy of the memory reads, nats).
"""
from __future__ import annotations

from contextlib import ExitStack

import torch
from torch import nn

from kd_engine.data import build_data
from kd_engine.data.loader import require_in_memory
from kd_engine.losses.anomaly import key_value_orthogonality, normality_embedding
from kd_engine.methods.anomaly_base import ANOMALY_METHODS, FeatureKD
from kd_engine.methods.registry import METHODS
from kd_engine.models import feature_taps
from kd_engine.models.taps import resolve_layers
from kd_engine.params import check
from kd_engine.parts.kv_memory import KeyValueMemory, attention_entropy


@METHODS.register("memkd")
@ANOMALY_METHODS.register("memkd")
class MemKD(FeatureKD):
    defaults = {**FeatureKD.defaults, "memory_layers": ["layer1"], "slots": 16, "exemplars": 8,
                "temperature": 1.0, "nm_weight": 0.1, "orth_weight": 0.1}

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(cfg, student, teacher, input_shape)
        p = self.p
        self.memory_layers = list(p["memory_layers"])
        check(bool(self.memory_layers) and set(self.memory_layers) <= set(self.layers), "distill.params.memory_layers",
              f"a non-empty subset of distill.params.layers {self.layers}, got {self.memory_layers!r}")
        for key in ("slots", "exemplars"):
            check(p[key] >= 1, f"distill.params.{key}", f"must be an integer >= 1, got {p[key]}")
        check(p["temperature"] > 0, "distill.params.temperature", f"must be > 0, got {p['temperature']}")
        for key in ("nm_weight", "orth_weight"):
            check(p[key] >= 0, f"distill.params.{key}", f"must be >= 0, got {p[key]}")
        self.memories = nn.ModuleDict({_key(n): KeyValueMemory(self.shapes[n][0], p["slots"], p["temperature"])
                                       for n in self.memory_layers})
        train = build_data(cfg.data, cfg.seed).train
        require_in_memory(train, "method 'memkd'")
        generator = torch.Generator().manual_seed(int(cfg.seed))
        chosen = torch.randperm(len(train), generator=generator)[: p["exemplars"]]
        self.register_buffer("exemplar_ids", train.ids[chosen].clone(), persistent=False)
        with torch.no_grad(), feature_taps(teacher, self.memory_layers) as feats:
            teacher(train.x[chosen].to(next(teacher.parameters()).device))
        for n in self.memory_layers:
            self.register_buffer(f"exemplar_{_key(n)}", feats[n].detach().clone(), persistent=False)
        self._before: dict[str, torch.Tensor] = {}
        self._entropy: list[torch.Tensor] = []

    def student_hooks(self, stack: ExitStack) -> None:
        self._before, self._entropy = {}, []
        modules = resolve_layers(self.student, self.memory_layers)
        for name, module in modules.items():
            handle = module.register_forward_hook(self._read_hook(name))
            stack.callback(handle.remove)

    def _read_hook(self, name: str):
        def hook(_module, _inputs, output):
            self._before[name] = output
            fused, attention = self.memories[_key(name)](output)
            self._entropy.append(attention_entropy(attention))
            return fused
        return hook

    def student_features(self, feats: dict) -> dict:
        return {**feats, **self._before}

    def extra_losses(self):
        entropy = torch.stack(self._entropy).mean(0).detach()
        nm = sum(normality_embedding(self.memories[_key(n)].read(getattr(self, f"exemplar_{_key(n)}"))[0],
                                     getattr(self, f"exemplar_{_key(n)}")) for n in self.memory_layers)
        orth = sum(key_value_orthogonality(m.keys, m.values) for m in self.memories.values())
        losses = {"normality": self.p["nm_weight"] * nm, "orthogonality": self.p["orth_weight"] * orth}
        return losses, {"memory_entropy": entropy}


def _key(layer: str) -> str:
    return layer.replace(".", "_")
