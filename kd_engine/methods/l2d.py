"""L2D (Yang et al., ICCV 2023; paper 25): multi-label knowledge distillation.

The student (and the teacher) are label-query models (``query_cnn``) giving one embedding and
one logit per label. The task loss is BCE summed over labels, computed here from the multi-hot
targets the dataset provides (``digit_mosaics``; looked up by instance id), not from the single
label the training loop passes. Per batch of N:

    L = BCE + mld_weight·L_MLD + cd_weight·L_CD + id_weight·L_ID [+ softmax_kd_weight·T²·KL]

- L_MLD = (1/N) Σ_{n,c} KL(Bern(σ(z_T)) ‖ Bern(σ(z_S))): one-vs-all binary distillation
  (``kd_engine.losses.binary.binary_kd``, which averages over labels, times C);
- L_CD, L_ID: class- and instance-aware structure of the label-wise embeddings
  (``kd_engine.losses.multilabel``);
- the softmax KD control treats the 10 logits as one distribution (the mismatch L2D argues
  against).

The teacher (``teacher_*`` params) is trained here with summed BCE and cached by hash, since the
engine's teacher cache trains single-label teachers; its outputs on the (unaugmented) training
images are computed once and looked up by instance id. Recorded per instance: ``bce``, ``mld``,
``cd``, ``id`` (the per-sample forms), ``n_labels``, ``teacher_bce``.
"""
from __future__ import annotations

from annotated_types import Ge, Gt
import torch

from kd_engine.data import build_data
from kd_engine.data.loader import require_in_memory
from kd_engine.errors import ConfigError
from kd_engine.losses.binary import binary_kd
from kd_engine.losses.logit import kd
from kd_engine.losses.multilabel import bce_sum, class_structure, instance_structure
from kd_engine.methods.base import Distiller, StepOutput
from kd_engine.params import Param, read_params
from kd_engine.methods.registry import METHODS
from kd_engine.parts.multilabel import cached_multilabel_teacher

DEFAULTS = {"mld_weight": Param(10.0, Ge(0)), "cd_weight": Param(100.0, Ge(0)),
            "id_weight": Param(1000.0, Ge(0)), "softmax_kd_weight": Param(0.0, Ge(0)),
            "temperature": Param(4.0, Gt(0)), "teacher_width": Param(32, Ge(1)),
            "teacher_dim": Param(32, Ge(1)), "teacher_heads": Param(1, Ge(1)),
            "teacher_epochs": Param(15, Ge(1)), "teacher_lr": Param(1e-3, Gt(0)),
            "teacher_batch_size": Param(64, Ge(1))}


@METHODS.register("l2d")
class L2D(Distiller):
    needs_teacher = False  # trained and cached by the method (multi-label BCE)
    wants_ids = True

    def __init__(self, cfg, student, teacher, input_shape):
        if teacher is not None:
            raise ConfigError("teacher: method 'l2d' trains its own multi-label teacher (distill.params.teacher_*); "
                              "remove the teacher section")
        if not hasattr(student, "label_embeddings"):
            raise ConfigError(f"student.name: method 'l2d' needs a label-query student (model query_cnn), "
                              f"got {cfg.student.name!r}")
        p = read_params(cfg.distill.params, DEFAULTS, "distill.params", "method l2d")
        data = build_data(cfg.data, cfg.seed)
        if "targets" not in data.meta:
            raise ConfigError(f"data.name: method 'l2d' needs multi-hot targets (dataset digit_mosaics), "
                              f"got {cfg.data.name!r}")
        targets = torch.as_tensor(data.meta["targets"], dtype=torch.float32)
        ids = torch.as_tensor(data.meta["target_ids"])
        index = torch.full((int(ids.max()) + 1,), -1, dtype=torch.long)
        index[ids] = torch.arange(len(ids))
        train = data.train
        require_in_memory(train, "method 'l2d'")
        split_seed = cfg.data.split_seed if cfg.data.split_seed is not None else cfg.seed
        teacher, source = cached_multilabel_teacher(
            "query_cnn", {"width": p["teacher_width"], "dim": p["teacher_dim"], "heads": p["teacher_heads"]},
            data.input_shape, data.num_classes, train.x, train.ids, targets[index[train.ids]], split_seed,
            cfg.cache_dir, p["teacher_epochs"], p["teacher_lr"], p["teacher_batch_size"])
        super().__init__(student, None)
        # Not `self.teacher`: the loop would treat it as a config teacher (cache, eval on y).
        self.ml_teacher = teacher.requires_grad_(False).eval()
        self.teacher_source = source
        self.p = p
        self.register_buffer("targets", targets, persistent=False)
        self.register_buffer("index", index, persistent=False)
        # Teacher-output cache: no augmentation, so each training image's teacher embeddings and
        # logits are computed once (rows aligned with ``index``; other splits' rows stay 0).
        with torch.no_grad():
            t_emb, t_logits = zip(*(teacher.label_embeddings(chunk) for chunk in train.x.split(512)))
        rows = index[train.ids]
        cache_emb = torch.zeros(len(ids), *t_emb[0].shape[1:])
        cache_logits = torch.zeros(len(ids), data.num_classes)
        cache_emb[rows], cache_logits[rows] = torch.cat(t_emb), torch.cat(t_logits)
        self.register_buffer("teacher_emb", cache_emb, persistent=False)
        self.register_buffer("teacher_logits", cache_logits, persistent=False)

    def train(self, mode: bool = True) -> "L2D":
        super().train(mode)
        self.ml_teacher.eval()  # frozen: its BatchNorm must not follow the student's batches
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor) -> StepOutput:
        p = self.p
        rows = self.index[ids]
        targets, t_emb, t_logits = self.targets[rows], self.teacher_emb[rows], self.teacher_logits[rows]
        s_emb, s_logits = self.student.label_embeddings(x)
        s_logits, t_logits = s_logits.float(), t_logits.float()
        bce = bce_sum(s_logits, targets, reduction="none")
        per_sample = {"bce": bce.detach(), "student_loss": bce.detach(), "n_labels": targets.sum(1),
                      "teacher_bce": bce_sum(t_logits, targets, reduction="none")}
        losses = {"task": bce.mean()}
        if p["mld_weight"]:
            mld = binary_kd(s_logits, t_logits, temperature=1.0, reduction="none") * s_logits.size(1)
            per_sample["mld"] = mld.detach()
            losses["mld"] = p["mld_weight"] * mld.mean()
        if p["cd_weight"]:
            cd = class_structure(s_emb, t_emb, targets, reduction="none")
            per_sample["cd"] = cd.detach()
            losses["cd"] = p["cd_weight"] * cd.mean()
        if p["id_weight"]:
            inst = instance_structure(s_emb, t_emb, targets, reduction="none")
            per_sample["id"] = inst.detach()
            losses["id"] = p["id_weight"] * inst.mean()
        if p["softmax_kd_weight"]:
            soft = kd(s_logits, t_logits, temperature=p["temperature"], reduction="none")
            per_sample["softmax_kd"] = soft.detach()
            losses["softmax_kd"] = p["softmax_kd_weight"] * soft.mean()
        return StepOutput(s_logits, losses, per_sample, t_logits)
