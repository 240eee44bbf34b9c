"""WAD (ICCV 2023; paper 21): weight-aware distillation for semi-supervised learning when the
unlabelled data hold unknown classes.

A SimCLR encoder (the teacher, trained without labels on every training image, cached) gives
L2-normalised features of shifted copies of each image. For an unlabelled x and class c,
s_c(x) = Σ_shift max_{l ∈ L_c} cos(z(x), z(l)) over the labelled exemplars L_c; the pseudo-label
is ŷ = argmax_c s_c and the weight the top-2 margin w = s_(1) − s_(2). The student minimises

    L = CE(f(x_l), y_l) on a draw of ``labelled_batch`` labelled images
        + unlabelled_weight · mean_{u in batch} w_u · CE(f(x_u), ŷ_u).

With ``rounds`` R > 1 the epochs are cut into R equal rounds; at the start of round r ≥ 1 the
α_r·|U_0| unlabelled images with the lowest student CE under their pseudo-label are promoted
into the labelled set (with that label), α_r = alpha·(1 − (r−1)/(R−1))^power, and the
similarities, pseudo-labels and weights of the rest are recomputed from the grown exemplars.
``weighting``: ``wad`` (the margin), ``uniform`` (w = 1, the unweighted control) or ``none``
(w = 0: supervised only). The known/unknown truth is read only to be recorded.
Recorded per instance: ``weight`` (the weight of its CE term: the strategy's w for unlabelled
images, 1 for labelled ones, which train through the labelled draws), ``wad_weight`` (the
margin; 0 once labelled), ``pseudo_label`` (the label trained on), ``labelled`` (now),
``promoted`` (the round it was promoted in, 0 = never) and ``known_truth``.
"""
from __future__ import annotations

from typing import Literal

from annotated_types import Ge, Gt, Interval
import torch
import torch.nn.functional as F

from kd_engine.data import build_data
from kd_engine.data.loader import require_in_memory
from kd_engine.errors import ConfigError
from kd_engine.methods.base import Distiller, StepOutput
from kd_engine.params import Param, read_params
from kd_engine.methods.registry import METHODS
from kd_engine.parts.simclr import SIMCLR_DEFAULTS, cached_simclr, shifted_features

WEIGHTINGS = ("wad", "uniform", "none")
SIMCLR_RANGES = {"hidden": Ge(1), "dim": Ge(1), "epochs": Ge(1), "lr": Gt(0), "tau": Gt(0), "shift": Ge(0),
                 "noise": Ge(0), "dropout": Interval(ge=0, lt=1)}
DEFAULTS = {"weighting": Param("wad", kind=Literal[WEIGHTINGS]), "rounds": Param(1, Ge(1)),
            "alpha": Param(0.1, Interval(ge=0, le=1)), "power": Param(2.0, Ge(0)),
            "labelled_batch": Param(32, Ge(1)), "unlabelled_weight": Param(1.0, Ge(0)),
            **{f"simclr_{k}": Param(v, SIMCLR_RANGES[k]) for k, v in SIMCLR_DEFAULTS.items()}}


def exemplar_similarity(feats: torch.Tensor, exemplars: torch.Tensor, labels: torch.Tensor,
                        num_classes: int) -> torch.Tensor:
    """(S, N, D) and (S, M, D) normalised features, (M,) labels -> (N, C): Σ_s max_{l in L_c}
    cos. A class without exemplars gets −S (below any attainable similarity)."""
    cos = feats @ exemplars.transpose(1, 2)  # (S, N, M)
    out = feats.new_full((feats.size(1), num_classes), -float(feats.size(0)))
    for c in range(num_classes):
        members = labels == c
        if members.any():
            out[:, c] = cos[:, :, members].amax(dim=2).sum(dim=0)
    return out


def margin_pseudo_labels(similarity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) -> (ŷ = argmax, w = top-1 − top-2 similarity)."""
    top = similarity.topk(2, dim=1)
    return top.indices[:, 0], top.values[:, 0] - top.values[:, 1]


def promotion_count(round_index: int, rounds: int, alpha: float, power: float, pool: int) -> int:
    """α_r·|U_0| with α_r = alpha·(1 − (r−1)/(R−1))^power for promotion rounds r = 1..R−1."""
    if round_index < 1 or rounds < 2:
        return 0
    return int(round(alpha * (1 - (round_index - 1) / (rounds - 1)) ** power * pool))


@METHODS.register("wad")
class WAD(Distiller):
    needs_teacher = False
    wants_ids = True

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(student, None)
        if teacher is not None:
            raise ConfigError("teacher: method 'wad' trains its own SimCLR teacher; remove the teacher section")
        p = read_params(cfg.distill.params, DEFAULTS, "distill.params", "method wad")
        self.p = p
        data = build_data(cfg.data, cfg.seed)
        truth = data.meta.get("truth")
        if truth is None:
            raise ConfigError(f"data.name: method 'wad' needs a semi-supervised dataset such as "
                              f"digits_mismatch, got {cfg.data.name!r}")
        train = data.train
        require_in_memory(train, "method 'wad'")
        self.num_classes = data.num_classes
        index = torch.full((int(train.ids.max()) + 1,), -1, dtype=torch.long)
        index[train.ids] = torch.arange(len(train))
        labelled = train.y >= 0
        simclr = {k[len("simclr_"):]: v for k, v in p.items() if k.startswith("simclr_")}
        split_seed = cfg.data.split_seed if cfg.data.split_seed is not None else cfg.seed
        encoder, self.teacher_source = cached_simclr(train.x, train.ids, split_seed, cfg.cache_dir, **simclr)
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("x_all", train.x, persistent=False)
        self.register_buffer("feats", shifted_features(encoder, train.x), persistent=False)
        known = torch.as_tensor(truth["known"])[torch.as_tensor(_positions(truth["instance_id"], train.ids))]
        self.register_buffer("known", known.float(), persistent=False)
        self.register_buffer("labelled", labelled.clone())
        self.register_buffer("targets", train.y.clone().clamp_min(0))
        self.register_buffer("promoted", torch.zeros(len(train)))
        self.register_buffer("wad_weight", torch.zeros(len(train)))
        self.register_buffer("round", torch.zeros((), dtype=torch.long))
        self.pool_size = int((~labelled).sum())
        self._relabel()

    def _relabel(self) -> None:
        """Pseudo-labels and margins of the unlabelled images from the current exemplars."""
        sim = exemplar_similarity(self.feats, self.feats[:, self.labelled], self.targets[self.labelled],
                                  self.num_classes)
        pseudo, margin = margin_pseudo_labels(sim)
        unl = ~self.labelled
        self.targets[unl] = pseudo[unl]
        self.wad_weight.copy_(torch.where(unl, margin, torch.zeros_like(margin)))

    def used_weights(self, positions: torch.Tensor) -> torch.Tensor:
        w = {"wad": self.wad_weight[positions], "uniform": torch.ones(len(positions), device=positions.device),
             "none": torch.zeros(len(positions), device=positions.device)}[self.p["weighting"]]
        return torch.where(self.labelled[positions], torch.ones_like(w), w)

    @torch.no_grad()
    def begin_epoch(self, epoch: int, total_epochs: int) -> None:
        target_round = min(epoch * self.p["rounds"] // total_epochs, self.p["rounds"] - 1)
        while int(self.round) < target_round:
            self.round += 1
            n = promotion_count(int(self.round), self.p["rounds"], self.p["alpha"], self.p["power"], self.pool_size)
            unl = torch.nonzero(~self.labelled).squeeze(1)
            if n == 0 or len(unl) == 0:
                continue
            was_training = self.student.training
            self.student.eval()
            ce = F.cross_entropy(self.student(self.x_all[unl]).float(), self.targets[unl], reduction="none")
            self.student.train(was_training)
            chosen = unl[ce.argsort()[:n]]
            self.labelled[chosen] = True
            self.promoted[chosen] = float(self.round)
            self._relabel()

    def forward(self, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor) -> StepOutput:
        pos = self.index[ids]
        logits = self.student(x)
        targets = self.targets[pos]
        ce = F.cross_entropy(logits.float(), targets, reduction="none")
        weights = self.used_weights(pos)
        unl = (~self.labelled[pos]).float()
        unl_loss = (unl * weights * ce).sum() / unl.sum().clamp_min(1.0)
        pool = torch.nonzero(self.labelled).squeeze(1)
        draw = pool[torch.randint(len(pool), (self.p["labelled_batch"],), device=pool.device)]
        lab_loss = F.cross_entropy(self.student(self.x_all[draw]).float(), self.targets[draw])
        per_sample = {"student_loss": ce.detach(), "weight": weights, "wad_weight": self.wad_weight[pos],
                      "pseudo_label": targets.float(), "labelled": self.labelled[pos].float(),
                      "promoted": self.promoted[pos], "known_truth": self.known[pos]}
        losses = {"task": lab_loss, "unlabelled": self.p["unlabelled_weight"] * unl_loss}
        return StepOutput(logits, losses, per_sample)


def _positions(truth_ids, ids: torch.Tensor) -> list[int]:
    where = {int(v): k for k, v in enumerate(list(truth_ids))}
    return [where[int(i)] for i in ids.tolist()]
