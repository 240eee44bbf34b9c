"""AdaSim (paper 14): DINO self-distillation with adaptive nearest-neighbour bootstrapping.

The student (any model with an ``embedding_layer`` and a final ``fc``/``head``) learns without
labels: backbone -> DINO head, against an EMA teacher (``EMATeacher``, cosine momentum, updated
in ``after_step``) whose output is centred (c ← 0.9c + 0.1·mean t) and sharpened (τ_T = 0.04;
student τ_S = 0.1). View 1 comes from image i, view 2 from its partner j(i), and
L = ½[H(P_T(v₂ʲ), P_S(v₁ⁱ)) + H(P_T(v₁ⁱ), P_S(v₂ʲ))].

``partner`` picks j(i): ``self`` (DINO), ``nearest`` (naive bootstrapping: always the top-1
non-self neighbour of the teacher backbone feature in the memory bank) or ``adaptive`` (AdaSim:
a V-epoch history of top-k votes; bootstrap only when the image itself is the top-voted
candidate, then sample j ~ softmax(S_sum/(V·ζ)) over the top-k, the image included). Partners
other than the image are used only from epoch V on, when the history is full.

Labels never reach the representation: the model's own classifier is trained as an online linear
probe on *detached* embeddings (so ``test/student_acc`` is a linear-probe accuracy), and labels
only score the neighbours (purity, leave-one-out kNN votes) for the record. The memory bank and
vote history live outside the checkpoint: a resumed run rebuilds them from its resume epoch.
"""
from __future__ import annotations

from typing import Literal

from annotated_types import Ge, Gt, Interval
import torch
import torch.nn.functional as F
from torch import nn

from kd_engine.data import build_data
from kd_engine.data.views import random_view, step_generator
from kd_engine.data.loader import require_in_memory
from kd_engine.errors import ConfigError
from kd_engine.losses.dino import dino_cross_entropy, updated_center
from kd_engine.methods.base import StepOutput
from kd_engine.methods.registry import METHODS
from kd_engine.methods.two_view import TwoViewDistiller
from kd_engine.metrics_ssl import effective_rank, embedding_std, mean_entropy
from kd_engine.models import feature_taps, layer_shapes
from kd_engine.params import Param, read_params
from kd_engine.parts.ema import EMATeacher, cosine_momentum
from kd_engine.parts.knn_memory import KNNVoteMemory, adaptive_partners

PARTNERS = ("self", "nearest", "adaptive")
DEFAULTS = {"partner": Param("adaptive", kind=Literal[PARTNERS]), "k": Param(5, Ge(1)),
            "history": Param(5, Ge(1)), "zeta": Param(0.01, Gt(0)), "hidden": Param(256, Ge(1)),
            "bottleneck": Param(64, Ge(1)), "out_dim": Param(256, Ge(1)), "student_temp": Param(0.1, Gt(0)),
            "teacher_temp": Param(0.04, Gt(0)), "center_momentum": Param(0.9, Interval(ge=0, le=1)),
            "momentum": Param(0.99, Interval(ge=0, le=1)), "final_momentum": Param(1.0, Interval(ge=0, le=1)),
            "views": {}}


class DINOHead(nn.Module):
    """MLP to ``hidden``, bottleneck, L2 normalisation, then a weight-normalised last layer
    (norm fixed to 1, DINO's ``norm_last_layer``)."""

    def __init__(self, dim: int, hidden: int, bottleneck: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, bottleneck))
        self.last = nn.Parameter(torch.randn(out_dim, bottleneck) * 0.02)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(z), dim=-1) @ F.normalize(self.last, dim=1).T


def _embed(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    with feature_taps(model, [layer]) as feats:
        model(x)
    return feats[layer].flatten(1)


@METHODS.register("adasim")
class AdaSim(TwoViewDistiller):
    needs_teacher = False
    wants_ids = True

    def __init__(self, cfg, student, teacher, input_shape):
        p = read_params(cfg.distill.params, DEFAULTS, "distill.params", "method adasim")
        super().__init__(student, None, p["views"], cfg.seed)
        self.layer = getattr(student, "embedding_layer", None)
        self.classifier = getattr(student, "fc", None) or getattr(student, "head", None)
        if self.layer is None or not isinstance(self.classifier, nn.Linear):
            raise ConfigError(f"student.name: adasim needs a model with an embedding_layer and a linear fc/head")
        self.p = p
        dim = int(torch.Size(layer_shapes(student, input_shape, [self.layer])[self.layer]).numel())
        self.head = DINOHead(dim, p["hidden"], p["bottleneck"], p["out_dim"])
        self.ema_backbone, self.ema_head = EMATeacher(student), EMATeacher(self.head)
        self.t_backbone, self.t_head = self.ema_backbone.module, self.ema_head.module
        self.register_buffer("center", torch.zeros(1, p["out_dim"]))
        data = build_data(cfg.data, cfg.data.split_seed if cfg.data.split_seed is not None else cfg.seed)
        require_in_memory(data.train, "method 'adasim'")
        self.train_x, self.train_y = data.train.x, data.train.y
        self.row_of = torch.full((int(data.train.ids.max()) + 1,), -1, dtype=torch.long)
        self.row_of[data.train.ids] = torch.arange(len(data.train.ids))
        self.memory = KNNVoteMemory(len(self.train_y), dim, p["k"], p["history"])
        self.total_steps = cfg.epochs * -(-len(self.train_y) // cfg.data.batch_size)
        self.epoch, self.bootstrapping = -1, False

    def get_extra_state(self) -> dict:
        """The kNN vote memory and the epoch counter ride in the checkpoint's state_dict, so a
        resumed run votes exactly as an uninterrupted one."""
        return {"memory": self.memory.state(), "epoch": torch.tensor(self.epoch)}

    def set_extra_state(self, state: dict) -> None:
        self.memory.load(state["memory"])
        self.epoch = int(state["epoch"])

    def begin_epoch(self, epoch: int, total_epochs: int) -> None:
        if self.epoch >= 0 and epoch > self.epoch:
            self.memory.end_epoch()  # the finished epoch's top-k become one slot of the history
        self.epoch = epoch
        self.bootstrapping = epoch >= self.p["history"] and self.memory.full

    def after_step(self, step: int, epoch: int) -> None:
        super().after_step(step, epoch)
        m = cosine_momentum(step, self.total_steps, self.p["momentum"], self.p["final_momentum"])
        self.ema_backbone.update(self.student, m)
        self.ema_head.update(self.head, m)

    def _partners(self, rows, sims, s_sum, step):
        """j(i) for the batch and whether the votes were reliable (AdaSim's test)."""
        b = torch.arange(len(rows))
        partner, reliable, _, _ = adaptive_partners(s_sum, rows, self.p["k"], self.p["zeta"],
                                                    max(1, len(self.memory.past)),
                                                    step_generator(self.view_seed, step, 2))
        reliable &= len(self.memory.past) > 0  # no votes yet: nothing is reliable
        if not self.bootstrapping or self.p["partner"] == "self":
            return rows, reliable
        if self.p["partner"] == "nearest":
            no_self = sims.clone()
            no_self[b, rows] = float("-inf")
            top = no_self.argmax(1)
            return torch.where(torch.isfinite(no_self[b, top]), top, rows), reliable
        return partner, reliable

    def forward(self, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor | None = None) -> StepOutput:
        if ids is None:
            raise ConfigError("method: adasim needs instance ids (run it through the kdw trainers)")
        step, spec = int(self.view_step), self.view_spec
        rows, b = self.row_of[ids.cpu()], torch.arange(len(ids))
        v1 = random_view(x, spec, step_generator(self.view_seed, step, 0))
        with torch.no_grad():
            t_feat1 = _embed(self.t_backbone, self.layer, v1)
            sims = self.memory.similarities(t_feat1.cpu())
            self.memory.record(rows, sims)
            v = max(1, len(self.memory.past))
            s_sum = self.memory.vote_sums(rows)
            partner, reliable = self._partners(rows, sims, s_sum, step)
            no_self = sims.clone()
            no_self[b, rows] = float("-inf")
            nn_sim, nn_idx = no_self.topk(min(self.p["k"], no_self.shape[1]), dim=1)
            found = torch.isfinite(nn_sim)
            nn_labels = torch.where(found, self.train_y[nn_idx], torch.full_like(nn_idx, -1))
            votes = F.one_hot(nn_labels.clamp(min=0), int(self.train_y.max()) + 1) * found.unsqueeze(-1)
            knn_correct = (votes.sum(1).argmax(1) == y.cpu()) & found[:, 0]
            self.memory.update(rows, t_feat1.cpu())
            v2 = random_view(self.train_x[partner].to(x.device), spec, step_generator(self.view_seed, step, 1))
            t_out = self.t_head(torch.cat([t_feat1, _embed(self.t_backbone, self.layer, v2)]))
        s_feat = _embed(self.student, self.layer, torch.cat([v1, v2]))
        s_out = self.head(s_feat)
        n = len(y)
        per = 0.5 * (dino_cross_entropy(s_out[:n], t_out[n:], self.center, self.p["student_temp"],
                                        self.p["teacher_temp"], reduction="none")
                     + dino_cross_entropy(s_out[n:], t_out[:n], self.center, self.p["student_temp"],
                                          self.p["teacher_temp"], reduction="none"))
        teacher_probs = torch.softmax((t_out.float() - self.center) / self.p["teacher_temp"], dim=-1)
        if self.training:
            self.center.copy_(updated_center(self.center, t_out, self.p["center_momentum"]))
        logits = self.classifier(s_feat[:n].detach())
        probe = F.cross_entropy(logits.float(), y, reduction="none")
        used = (partner != rows)
        same = self.train_y[partner] == y.cpu()
        dev = x.device
        per_sample = {"dino_loss": per.detach(), "probe_loss": probe.detach(),
                      "nn_used": used.float().to(dev), "vote_reliable": reliable.float().to(dev),
                      "self_vote": (s_sum[b, rows] / v).to(dev),
                      "partner_vote": (s_sum[b, partner] / v).to(dev),
                      "partner_same_label": same.float().to(dev),
                      "nn_sim": nn_sim[:, 0].nan_to_num(0.0, neginf=0.0).to(dev),
                      "nn_same_label": (nn_labels[:, 0] == y.cpu()).float().to(dev),
                      "knn_correct": knn_correct.float().to(dev)}
        scalars = {"embedding_std": torch.tensor(embedding_std(s_feat[:n].detach())),
                   "teacher_entropy": torch.tensor(mean_entropy(teacher_probs)),
                   "teacher_sample_entropy": -(teacher_probs * teacher_probs.clamp_min(1e-12).log()).sum(1).mean(),
                   "teacher_rank": torch.tensor(effective_rank(t_feat1)),
                   "bootstrap_rate": used.float().mean(), "vote_reliable_rate": reliable.float().mean(),
                   "momentum": torch.tensor(cosine_momentum(step, self.total_steps, self.p["momentum"],
                                                            self.p["final_momentum"]))}
        return StepOutput(logits, {"dino": per.mean(), "probe": probe.mean()}, per_sample,
                          scalars={f"train/{k}": v_.float().to(dev) for k, v_ in scalars.items()})
