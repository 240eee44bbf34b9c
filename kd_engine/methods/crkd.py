"""Cr-KD: class-relation knowledge distillation for novel class discovery (ICCV 2023, paper 10;
basis: the paper's public code).

The student is an ``ncd_resnet`` (known head of cosine prototypes + H novel heads). Labels
below ``known`` are labelled (known) classes; samples of the other classes are unlabelled: their
labels are used for nothing but evaluation (the mask y >= known says which samples are in the
unlabelled set, as in NCD). Before the first epoch the trainer runs stage 1
(`kd_engine.methods.ncd_stage.stage1_phase`): the student trains supervised on the known classes
and a frozen copy becomes the teacher. Evaluations add the NCD metrics (``student_acc`` is
``all_acc``: raw argmax indices of novel clusters are arbitrary), and the paper's headline metric
``train/novel_acc`` (clustering accuracy on the novel training samples, clean images, eval mode)
is logged each epoch and in the final metrics.

Stage 2, per step, on two augmented views (UNO base):
- logits per head h: [known, novel_h] (cosine); targets: one-hot for labelled samples, and
  Sinkhorn-Knopp pseudo-labels (ε = 0.05, 3 iterations) on the novel part for unlabelled ones;
- L_UNO = mean over heads of the swapped-view CE(logits_v / τ, targets_v'), τ = 0.1;
- L_kd (unlabelled samples only) = −T² mean_{views, heads, i} [u_i Σ_c p_ic log q_ic], p from the
  frozen teacher's known head, q from the student's, u the gate of
  `kd_engine.losses.class_relation.relation_gate` (not detached; ``gate: false`` sets u ≡ 1);
- L = L_UNO + α L_kd (α = 0.1; α = 0 is UNO). Prototypes are renormalised after every step.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Interval

from kd_engine.data.augment import jitter
from kd_engine.errors import ConfigError
from kd_engine.losses.class_relation import class_relation_kd, relation_gate
from kd_engine.losses.sinkhorn import sinkhorn_knopp
from kd_engine.methods.base import Distiller, StepOutput
from kd_engine.methods.ncd_stage import ncd_metrics, ncd_predictions, stage1_phase
from kd_engine.methods.registry import METHODS
from kd_engine.params import Param, read_params

DEFAULTS = {"alpha": Param(0.1, Ge(0)), "gate": True, "tau": Param(0.1, Gt(0)), "temperature": Param(4.0, Gt(0)),
            "epsilon": Param(0.05, Gt(0)), "sk_iterations": Param(3, Ge(0)), "stage1_epochs": Param(20, Ge(0)),
            "head_momentum": Param(0.9, Interval(gt=0, lt=1))}


def crkd_settings(params: dict) -> dict:
    return read_params(params, DEFAULTS, "distill.params", "method crkd")


@METHODS.register("crkd")
class CrKD(Distiller):
    needs_teacher = False
    single_process = True

    def __init__(self, cfg, student, teacher, input_shape):
        if teacher is not None:
            raise ConfigError("teacher: method crkd trains its own teacher (stage 1 on the known classes, "
                              "distill.params.stage1_epochs); remove the teacher section")
        if not hasattr(student, "heads") or not hasattr(student, "known"):
            raise ConfigError(f"student.name: method crkd needs an ncd_resnet student, got {cfg.student.name!r}")
        super().__init__(student, None)
        p = crkd_settings(dict(cfg.distill.params))
        self.alpha, self.use_gate, self.tau, self.T = float(p["alpha"]), p["gate"], float(p["tau"]), float(p["temperature"])
        self.epsilon, self.sk_iterations = float(p["epsilon"]), p["sk_iterations"]
        self.stage1_epochs, self.head_momentum = p["stage1_epochs"], float(p["head_momentum"])
        self.known = student.known
        self.frozen = None  # the stage-1 teacher, set by finish_stage1 (kept in the run's state)
        self.register_buffer("stage1_done", torch.zeros((), dtype=torch.bool))

    # -- the trainer's hooks ----------------------------------------------------------------------
    def check_data(self, data) -> None:
        known = data.meta.get("known")
        if known is None:
            raise ConfigError("data.name: method crkd needs a dataset with known and novel classes "
                              "(e.g. digits_ncd)")
        if known != self.known:
            raise ConfigError(f"student.params.known: {self.known} known classes, but the data has "
                              f"{known} (data.params.known_classes)")

    def phases(self, task) -> list:
        return [] if bool(self.stage1_done) else [stage1_phase(self, task)]

    def _ncd(self, split: str, task) -> dict[str, float]:
        pred = ncd_predictions(self.student, task.eval_batches(split), task.device, task.autocast)
        return {f"{split}/{k}": v for k, v in ncd_metrics(pred, self.known).items()}

    def evaluation_metrics(self, split: str, task) -> dict[str, float]:
        metrics = self._ncd(split, task)
        metrics[f"{split}/student_acc"] = metrics[f"{split}/all_acc"]
        if split == "test":
            metrics.update(self._ncd("train", task))
        return metrics

    def epoch_metrics(self, task) -> dict[str, float]:
        return self._ncd("train", task)

    def finish_stage1(self) -> None:
        """Freeze a copy of the stage-1 student as the class-relation teacher."""
        self.frozen = copy.deepcopy(self.student).eval()
        for parameter in self.frozen.parameters():
            parameter.requires_grad_(False)
        self.stage1_done.fill_(True)

    def train(self, mode: bool = True) -> "CrKD":
        super().train(mode)
        if self.frozen is not None:
            self.frozen.eval()
        return self

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if any(k.startswith("frozen.") for k in state_dict) and self.frozen is None:
            self.finish_stage1()  # resuming after stage 1: the teacher's slot must exist first
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def after_step(self, step: int, epoch: int) -> None:
        self.student.normalize_prototypes()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        if self.frozen is None:
            raise RuntimeError("crkd: stage 1 has not run (kdw train runs it first)")
        k, scale = self.known, self.tau
        unl = y >= k
        views = [jitter(x), jitter(x)]
        outs = [self.student.heads(v) for v in views]  # (known (B,K), novel (H,B,N)) per view
        with torch.no_grad():
            t_known = [self.frozen.heads(v)[0] for v in views]
        heads = outs[0][1].shape[0]
        targets = []  # per view: (H, B, K+N)
        for known_logits, novel in outs:
            t = torch.zeros(heads, len(y), k + novel.shape[2], device=x.device)
            t[:, ~unl, :] = F.one_hot(y[~unl], k + novel.shape[2]).float()
            if unl.any():
                for h in range(heads):
                    t[h, unl, k:] = sinkhorn_knopp(novel[h, unl].float(), self.epsilon, self.sk_iterations)
            targets.append(t)
        uno = torch.zeros(heads, len(y), device=x.device)
        for v, w in ((0, 1), (1, 0)):
            known_logits, novel = outs[v]
            logits = torch.cat([known_logits.unsqueeze(0).expand(heads, -1, -1), novel], 2).float() / scale
            uno = uno + 0.5 * -(targets[w] * F.log_softmax(logits, 2)).sum(2)
        kd = torch.zeros(len(y), device=x.device)
        gate = torch.zeros(len(y), device=x.device)
        if unl.any():
            for v in range(2):
                known_logits, novel = outs[v]
                for h in range(heads):
                    u = relation_gate(torch.cat([known_logits[unl], novel[h, unl]], 1).float(), k, self.tau, self.T)
                    gate[unl] = gate[unl] + u.detach() / (2 * heads)
                    kd[unl] = kd[unl] + class_relation_kd(known_logits[unl].float(), t_known[v][unl].float(),
                                                          u if self.use_gate else None, self.tau, self.T,
                                                          reduction="none") / (2 * heads)
        self._track_heads(uno.detach().mean(1))
        losses = {"task": uno.mean(), "distill": self.alpha * kd[unl].mean() if unl.any() else kd.sum()}
        scalars = self._stats(outs, unl, gate)
        best = self.student.best_head()
        pseudo = torch.full_like(y, -1)
        pseudo[unl] = targets[0][best, unl, k:].argmax(1) + k
        per_sample = {"student_loss": uno.detach().mean(0), "distill_loss": kd.detach(), "gate": gate,
                      "unlabelled": unl.float(), "pseudo_label": pseudo.float()}
        logits = torch.cat([outs[0][0], outs[0][1][best]], 1)
        return StepOutput(logits, losses, per_sample, None, scalars)

    @torch.no_grad()
    def _track_heads(self, head_losses: torch.Tensor) -> None:
        """Running loss per novel head (EMA); the model reports the head with the lowest."""
        buffer = self.student.head_loss
        if bool((buffer == 0).all()):
            buffer.copy_(head_losses)
        else:
            buffer.mul_(self.head_momentum).add_((1 - self.head_momentum) * head_losses)

    @torch.no_grad()
    def _stats(self, outs, unl, gate) -> dict[str, torch.Tensor]:
        """Per step: the entropy of the known-head distribution at τT on unlabelled samples (the
        paper's 'fading relation'), and the mean raw (un-normalised) gate."""
        known_logits, novel = outs[0]
        zero = torch.zeros((), device=unl.device)
        if not unl.any():
            return {"train/known_entropy_novel": zero, "train/gate_raw_mean": zero}
        p = F.softmax(known_logits[unl].float() / (self.tau * self.T), 1)
        entropy = -(p * p.clamp_min(1e-12).log()).sum(1).mean()
        raw = F.softmax(torch.cat([known_logits[unl], novel[self.student.best_head(), unl]], 1).float()
                        / (self.tau * self.T), 1)[:, :self.known].sum(1).mean()
        return {"train/known_entropy_novel": entropy, "train/gate_raw_mean": raw}
