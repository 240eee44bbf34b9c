"""CRD's owned parts: the embedding heads and the memory bank of every training instance.

Contrastive representation distillation (Tian et al., ICLR 2020) contrasts each instance's
student embedding with the teacher's embedding of the same instance (positive) and of K other
instances (negatives). Computing K teacher embeddings per step would be too costly, so both
sides keep a memory of every training instance's last embedding, updated with momentum; the
negatives are read from it. Rows are keyed by instance id, which is why the term asks the
training loop for the batch's ids.
"""
from __future__ import annotations

import math
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Interval
from torch import nn

from kd_engine.errors import ConfigError

from .learned import contrast_scores, crd
from .term_modules import ModuleTerm, TermBatch, TermSetup
from kd_engine.losses.term_registry import term


def _training_ids(setup: TermSetup) -> torch.Tensor:
    """The training split's instance ids, sorted (the memory's row order)."""
    from kd_engine.data import build_data  # built lazily: only CRD needs the split at setup time

    cfg = setup.cfg
    if cfg is None:
        raise setup.fail("needs the experiment config to size its memory")
    seed = cfg.data.split_seed if cfg.data.split_seed is not None else cfg.seed
    ids = build_data(cfg.data, seed).train.ids
    return torch.as_tensor(np.sort(np.asarray(ids, dtype=np.int64)))


@term("crd", "module")
class CRDTerm(ModuleTerm):
    """Embedding heads (linear, then unit length) on both sides, and one memory per side.

    Defaults are the paper's: 128-d embeddings, K = 16384 negatives (at most N − 1 on a smaller
    training set of N instances), τ = 0.07, memory momentum 0.5. Memories start uniform in
    ±1/√(d/3); the NCE normalising constants Z are fixed from the first training batch
    (Z = mean score · N). Negatives are drawn uniformly from the other instances. Layers default
    to each model's embedding layer (features are flattened). Memories, Z and the heads are
    buffers/parameters of this module, so they resume with the run. Under several processes
    (DDP) each keeps and updates its own memory from its own batches; they are not synchronised."""

    wants_ids = True

    def __init__(self, setup: TermSetup, feat_dim: Annotated[int, Ge(1)] = 128,
                 negatives: Annotated[int, Ge(1)] = 16384, temperature: Annotated[float, Gt(0)] = 0.07,
                 momentum: Annotated[float, Interval(ge=0, le=1)] = 0.5):
        s_names = setup.layers("student", getattr(setup.student, "embedding_layer", None))
        t_names = setup.layers("teacher", getattr(setup.teacher, "embedding_layer", None))
        if len(s_names) != 1 or len(t_names) != 1:
            raise setup.fail(f"reads one layer per side; got {s_names} and {t_names}")
        super().__init__(s_names, t_names)
        s_shape, = setup.shapes("student", s_names)
        t_shape, = setup.shapes("teacher", t_names)
        self.embed_student = nn.Linear(int(np.prod(s_shape)), feat_dim)
        self.embed_teacher = nn.Linear(int(np.prod(t_shape)), feat_dim)
        ids = _training_ids(setup)
        if len(ids) < 2:
            raise setup.fail(f"needs at least 2 training instances, got {len(ids)}")
        self.register_buffer("ids", ids)
        bound = 1.0 / math.sqrt(feat_dim / 3.0)
        self.register_buffer("memory_student", torch.rand(len(ids), feat_dim) * 2 * bound - bound)
        self.register_buffer("memory_teacher", torch.rand(len(ids), feat_dim) * 2 * bound - bound)
        self.register_buffer("z", torch.full((2,), -1.0))  # (student anchor, teacher anchor); < 0: unset
        self.negatives = min(int(negatives), len(ids) - 1)
        self.temperature, self.momentum = float(temperature), float(momentum)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(self.ids.device).long()
        rows = torch.searchsorted(self.ids, ids).clamp_max(len(self.ids) - 1)
        if not bool((self.ids[rows] == ids).all()):
            raise ConfigError("crd: the batch holds instance ids outside the training split "
                              "its memory was built for")
        return rows

    def contrast_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """(B, 1 + K): each instance's own row, then K rows drawn uniformly from the others."""
        n = len(self.ids)
        others = torch.randint(0, n - 1, (len(rows), self.negatives), device=rows.device)
        others = others + (others >= rows.unsqueeze(1)).long()  # skip the instance itself
        return torch.cat([rows.unsqueeze(1), others], dim=1)

    def forward(self, batch: TermBatch) -> torch.Tensor:
        if batch.ids is None:
            raise ConfigError("crd needs instance ids (run it through the kdw trainers)")
        (s,), (t,) = self.features(batch)
        f_s = F.normalize(self.embed_student(s.flatten(1)), dim=1)
        f_t = F.normalize(self.embed_teacher(t.detach().flatten(1)), dim=1)
        rows = self.rows(batch.ids)
        contrast = self.contrast_rows(rows)
        mem_s, mem_t = self.memory_student[contrast], self.memory_teacher[contrast]
        n = len(self.ids)
        if bool((self.z < 0).any()):
            with torch.no_grad():
                score_s = contrast_scores(mem_t, f_s, self.temperature).mean()
                score_t = contrast_scores(mem_s, f_t, self.temperature).mean()
                self.z.copy_(torch.stack([score_s, score_t]) * n)
        loss = crd(f_s, f_t, mem_s, mem_t, self.z[0], self.z[1], n, self.temperature, reduction="none")
        if self.training:
            with torch.no_grad():
                for memory, fresh in ((self.memory_student, f_s), (self.memory_teacher, f_t)):
                    mixed = memory[rows] * self.momentum + fresh.detach().float() * (1.0 - self.momentum)
                    memory[rows] = F.normalize(mixed, dim=1)
        return loss
