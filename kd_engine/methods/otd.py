"""OTD (paper 5): steer unreliable gradients with the low-rank subspace of reliable ones, for
adaptation across a domain shift *and* new classes. The whole dual-stream form is a
*reconstruction* (our reading rests on the paper's abstract and a figure caption).

Each batch mixes labelled source images (known classes) and unlabelled target images (a few
labelled per novel class). Losses: source CE; on the target, pseudo-label CE where the student's
confidence ≥ ``threshold`` (split into known-class and novel-class pseudo-labels) plus few-shot CE
(novel). For the parameter group ``group`` (last block + head), per step:

* g_src = ∇L_src fills a 30-gradient buffer whose SVD (refreshed every 10 pushes) keeps U_r at 90 %
  energy; g_known = ∇L_known fills a second buffer the same way;
* stream 1 (cross-domain): g_known ← U_rU_rᵀg + α(I − U_rU_rᵀ)g with the source subspace (and
  g_novel too when stream 2 is off);
* stream 2 (cross-class): g_novel ← the same projection with the known-class subspace.

The change of gradient enters through a zero-valued surrogate term, so the trainers' single
backward pass applies it after backward and before the optimizer step.
``mode: source_only`` trains on the source CE alone (target quantities are still measured).
"""
from __future__ import annotations

from typing import Literal

from annotated_types import Ge, Interval
import torch
import torch.nn.functional as F

from kd_engine.data import build_data
from kd_engine.errors import ConfigError
from kd_engine.methods.base import Distiller, StepOutput
from kd_engine.methods.registry import METHODS
from kd_engine.params import Param, read_params
from kd_engine.parts.grad_subspace import GradientSubspace, flat, gradient_surrogate, project, unflat

# threshold >= 1 keeps no pseudo-label (a control)
DEFAULTS = {"mode": Param("self_train", kind=Literal["source_only", "self_train"]), "stream1": False,
            "stream2": False, "alpha": Param(0.3, Interval(ge=0, le=1)), "threshold": Param(0.9, Ge(0)),
            "buffer": Param(30, Ge(1)), "refresh": Param(10, Ge(1)), "energy": Param(0.9, Interval(gt=0, le=1)),
            "group": ["layer3", "fc"]}


@METHODS.register("otd")
class OTD(Distiller):
    needs_teacher = False
    wants_ids = True

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(student, None)
        p = read_params(cfg.distill.params, DEFAULTS, "distill.params", "method otd")
        if p["mode"] == "source_only" and (p["stream1"] or p["stream2"]):
            raise ConfigError("distill.params.mode: source_only has no target gradient to steer; "
                              "set stream1/stream2 false")
        names = [n for n, _ in student.named_parameters()]
        self.group = [prm for n, prm in student.named_parameters()
                      if any(n == g or n.startswith(g + ".") for g in p["group"])]
        if not self.group:
            raise ConfigError(f"distill.params.group: {p['group']} matches no parameter of the student "
                              f"(e.g. {', '.join(names[:4])}, ...)")
        self.p = p
        data = build_data(cfg.data, cfg.data.split_seed if cfg.data.split_seed is not None else cfg.seed)
        if "domain" not in data.meta:
            raise ConfigError(f"data.name: otd needs a dataset with source/target domains (digits_shift), "
                              f"got {cfg.data.name!r}")
        ids = data.train.ids
        self.row_of = torch.full((int(ids.max()) + 1,), -1, dtype=torch.long)
        self.row_of[ids] = torch.arange(len(ids))
        self.domain = torch.tensor(data.meta["domain"], dtype=torch.bool)
        self.fewshot = torch.tensor(data.meta["fewshot"], dtype=torch.bool)
        self.true_label = torch.tensor(data.meta["true_label"])
        self.known = int(data.meta["known_classes"])
        self.src_space = GradientSubspace(p["buffer"], p["refresh"], p["energy"])
        self.known_space = GradientSubspace(p["buffer"], p["refresh"], p["energy"])

    def _grad(self, loss: torch.Tensor) -> torch.Tensor | None:
        if not loss.requires_grad:
            return None
        return flat(torch.autograd.grad(loss, self.group, retain_graph=True))

    def forward(self, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor | None = None) -> StepOutput:
        if ids is None:
            raise ConfigError("method: otd needs instance ids (run it through the kdw trainers)")
        rows = self.row_of[ids.cpu()]
        tgt, few = self.domain[rows].to(x.device), self.fewshot[rows].to(x.device)
        src = ~tgt
        logits = self.student(x)
        conf, pl = logits.detach().float().softmax(1).max(1)
        used = tgt & ~few & (conf >= self.p["threshold"])
        target_y = torch.where(few, y, pl).clamp(min=0)
        ce = F.cross_entropy(logits.float(), torch.where(src, y, target_y).clamp(min=0), reduction="none")
        zero = logits.sum() * 0.0
        n_tgt = max(1, int(tgt.sum()))
        l_src = ce[src].mean() if bool(src.any()) else zero
        known_mask, novel_mask = used & (pl < self.known), (used & (pl >= self.known)) | few
        l_known = (ce * known_mask).sum() / n_tgt if bool(known_mask.any()) else zero
        l_novel = (ce * novel_mask).sum() / n_tgt if bool(novel_mask.any()) else zero
        g_src, g_known, g_novel = self._grad(l_src), self._grad(l_known), self._grad(l_novel)
        cos = {"cos_known_src": self.src_space.cosine(g_known) if g_known is not None else 0.0,
               "cos_novel_src": self.src_space.cosine(g_novel) if g_novel is not None else 0.0,
               "cos_novel_known": self.known_space.cosine(g_novel) if g_novel is not None else 0.0}
        losses = {"task": l_src}
        if self.p["mode"] == "self_train":
            losses["target"] = l_known + l_novel
            delta = torch.zeros_like(g_src if g_src is not None else flat([p.detach() for p in self.group]))
            if g_known is not None and self.p["stream1"]:
                delta += project(g_known, self.src_space.basis, self.p["alpha"]) - g_known
            if g_novel is not None and (self.p["stream1"] or self.p["stream2"]):
                space = self.known_space if self.p["stream2"] else self.src_space
                delta += project(g_novel, space.basis, self.p["alpha"]) - g_novel
            if self.p["stream1"] or self.p["stream2"]:
                losses["steer"] = gradient_surrogate(self.group, unflat(delta, self.group))
        if self.training:
            if g_src is not None:
                self.src_space.push(g_src)
            if g_known is not None:
                self.known_space.push(g_known)
        truth = self.true_label[rows].to(x.device)
        nan = torch.full_like(conf, float("nan"))
        per_sample = {"target": tgt.float(), "fewshot": few.float(), "pseudo_label": torch.where(tgt, pl, -1).float(),
                      "pseudo_conf": torch.where(tgt, conf, nan), "pseudo_used": used.float(),
                      "pseudo_correct": torch.where(used, (pl == truth).float(), nan),
                      "novel_loss_mask": novel_mask.float()}
        scalars = {**cos, "src_rank": self.src_space.rank, "known_rank": self.known_space.rank,
                   "src_energy_r1": self.src_space.energy_at(1), "src_energy_r3": self.src_space.energy_at(3),
                   "src_energy_r10": self.src_space.energy_at(10),
                   "pseudo_rate": float(used.sum()) / n_tgt}
        return StepOutput(logits, losses, per_sample,
                          scalars={f"train/{k}": torch.tensor(float(v), device=x.device) for k, v in scalars.items()})
