"""UniKD (ICCV 2023): a detector student mimics any detector teacher through a frozen query
extractor trained on the teacher's outputs. Design sketch: the paper's abstract gives the idea;
the mechanism below is our reconstruction.

Stage 1 (a phase before the epochs): the Adaptive Knowledge Extractor φ with head h
(`kd_engine.parts.knowledge_extractor`) reads the frozen teacher's FPN maps F_T and learns to
reproduce the teacher's own detections D_T (its top-Q boxes above a score threshold, computed
once per image) under the Hungarian set loss (`kd_engine.losses.set_loss`). Then φ and h are
frozen and e_T = φ(F_T) is kept per image.

Stage 2 (the epochs): the student's maps pass a trainable 1×1 adapter A (the only bridge, kept
1×1 so it cannot satisfy φ by itself) into the frozen φ, and

    L = L_det + set_weight · setloss(h(φ(A(F_S))), D_T) + embed_weight · mean ‖φ(A(F_S)) − e_T‖²

Because φ reads whatever map it is given and answers in the teacher's output space (boxes and
classes), no layer of the student has to correspond to a layer of the teacher: the pair may be
of different kinds (Faster R-CNN teacher, FCOS student). Recorded per training image: the set
loss and its parts, the embedding MSE and the number of teacher boxes; per teacher box: the
query matched to it and the IoU of that query's box with it. Attention maps of the queries on a
few probe images are saved after stage 1 (on the teacher's maps) and at the end (the student's).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_iou

from kd_engine.losses.set_loss import hungarian_match, set_loss_parts
from kd_engine.methods.base import Phase, PhaseReport, StepOutput
from kd_engine.methods.detection_base import DETECTION_METHODS, DetectionOutput, student_pass
from kd_engine.methods.fpn_mimic import PARAMS as MIMIC_PARAMS, FPNMimic, detection_classes
from kd_engine.methods.registry import METHODS
from kd_engine.params import Param, read_params
from kd_engine.parts.knowledge_extractor import KnowledgeExtractor, capture_maps
from annotated_types import Ge, Gt, Interval

PARAMS = {"levels": MIMIC_PARAMS["levels"], "queries": Param(8, Ge(1)), "dim": Param(32, Ge(4)),
          "heads": Param(4, Ge(1)), "min_score": Param(0.3, Interval(ge=0, le=1)),
          "pretrain_epochs": Param(20, Ge(0)), "pretrain_batch": Param(32, Ge(1)), "pretrain_lr": Param(0.002, Gt(0)),
          "set_weight": Param(1.0, Ge(0)), "embed_weight": Param(1.0, Ge(0)), "no_object_weight": Param(0.1, Ge(0)),
          "probe_images": Param(4, Ge(0))}
BOX_COLUMNS = ("x0", "y0", "x1", "y1")


@METHODS.register("unikd")
@DETECTION_METHODS.register("unikd")
class UniKD(FPNMimic):
    name = "unikd"

    def __init__(self, cfg, student, teacher, input_shape):
        p = read_params(cfg.distill.params, PARAMS, "distill.params", "method unikd")
        super().__init__(cfg, student, teacher, input_shape, p)
        self.extractor = KnowledgeExtractor(teacher.backbone.out_channels, detection_classes(teacher),
                                            len(self.levels), p["queries"], p["dim"], p["heads"])
        self.records.top_k, self.records.min_score = p["queries"], p["min_score"]
        self.seed, self._e_teacher = int(cfg.seed), {}
        self._probe: list = []

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.student.parameters(), *self.adapters.parameters()]

    def _set_parts(self, e_logits_boxes, dets, matches=None):
        return set_loss_parts(e_logits_boxes[1], e_logits_boxes[2], dets, matches,
                              no_object_weight=self.p["no_object_weight"])

    # -- stage 1 ----------------------------------------------------------------------------------
    def phases(self, task) -> list[Phase]:
        train, tally = task.data.train, {"loss": 0.0, "n": 0}
        self._probe = [train[i] for i in range(min(self.p["probe_images"], len(train)))]
        params = list(self.extractor.parameters())

        def batches():
            generator = torch.Generator().manual_seed(self.seed)
            for _ in range(self.p["pretrain_epochs"]):
                tally.update(loss=0.0, n=0)
                for chunk in torch.randperm(len(train), generator=generator).split(self.p["pretrain_batch"]):
                    items = [train[i] for i in chunk.tolist()]
                    yield [im.to(task.device) for im, _, _ in items], [int(i) for _, _, i in items]

        def step(batch) -> StepOutput:
            maps, dets = self.records(*batch)
            out = self.extractor(maps)
            loss = self._set_parts(out, dets)["total"]
            tally["loss"] += float(loss.detach().sum())
            tally["n"] += len(loss)
            return StepOutput(out[1], {"ake_set": loss.mean()})

        def finish() -> PhaseReport:
            self.extractor.requires_grad_(False)
            report = {"ake/pretrain_set_loss": tally["loss"] / max(tally["n"], 1)}
            return PhaseReport(report, self.attention_artifacts("teacher"),
                               f"AKE pretrained {self.p['pretrain_epochs']} epochs on the teacher's detections")

        return [Phase("ake_pretrain", torch.optim.AdamW(params, lr=self.p["pretrain_lr"]), params, batches, step,
                      finish)]

    # -- stage 2 ----------------------------------------------------------------------------------
    def forward(self, images, targets) -> DetectionOutput:
        ids = [int(t["image_id"]) for t in targets]
        maps_t, dets = self.records(images, ids)
        sp = student_pass(self.student, images, targets)
        out = self.extractor(self.adapted(sp.features))
        matches = hungarian_match(out[1], out[2], dets)
        parts = self._set_parts(out, dets, matches)
        e_t = self._teacher_embeddings(ids, maps_t)
        embed = (out[0] - e_t).pow(2).mean((1, 2))
        losses = {"task": sp.loss, "ake_set": self.p["set_weight"] * parts["total"].mean(),
                  "ake_embed": self.p["embed_weight"] * embed.mean()}
        scalars = {"train/student_cls": sp.cls_batch, "train/student_box": sp.box_batch}
        return DetectionOutput(losses, scalars, lambda: self._rows(ids, parts, embed, dets, matches, out[2]))

    @torch.no_grad()
    def _teacher_embeddings(self, ids, maps_t):
        missing = [k for k, i in enumerate(ids) if i not in self._e_teacher]
        if missing:
            e = self.extractor.embed([m[missing] for m in maps_t])[0]
            self._e_teacher.update({ids[k]: e[j] for j, k in enumerate(missing)})
        return torch.stack([self._e_teacher[i] for i in ids])

    def _rows(self, ids, parts, embed, dets, matches, boxes) -> dict[str, np.ndarray]:
        """One row per image (query −1): set loss parts, embedding MSE, teacher box count; one
        row per teacher box: the query matched to it, its label, box (normalised) and the IoU
        of the query's box with it."""
        n = len(ids)
        image = {"instance_id": np.asarray(ids), "query": np.full(n, -1), "label": np.full(n, -1),
                 "teacher_boxes": np.asarray([len(d["labels"]) for d in dets]), "embed_mse": embed.detach().cpu().numpy(),
                 **{f"set_{k}": v.detach().cpu().numpy() for k, v in parts.items()}}
        per_box = []
        for iid, d, (rows, cols), pred in zip(ids, dets, matches, boxes.detach()):
            true = d["boxes"][cols]
            iou = torch.diag(box_iou(pred[rows], true)) if len(rows) else torch.zeros(0)
            per_box.append(np.column_stack([np.full(len(rows), iid), rows, d["labels"][cols].cpu().numpy(),
                                            iou.cpu().numpy(), true.cpu().numpy()]).reshape(-1, 8))
        per_box = np.concatenate(per_box)
        box = dict(zip(("instance_id", "query", "label", "match_iou", *BOX_COLUMNS), per_box.T))
        keys = list(dict.fromkeys([*image, *box]))
        fill = lambda part, k, m: np.asarray(part[k], dtype=float) if k in part else np.full(m, np.nan)  # noqa: E731
        out = {k: np.concatenate([fill(image, k, n), fill(box, k, len(per_box))]) for k in keys}
        for k in ("instance_id", "query", "label"):
            out[k] = out[k].astype(np.int64)
        out["level"] = np.full(len(out["instance_id"]), -1)
        return out

    def detection_artifacts(self, split: str) -> list[dict]:
        """At the end of the run (the test pass): the queries on the student's adapted maps."""
        return self.attention_artifacts("student") if split == "test" else []

    @torch.no_grad()
    def attention_artifacts(self, role: str) -> list[dict]:
        """The queries' attention (averaged over heads; (P, Q, tokens), finest level first) and
        their boxes on the probe images (the first training images), read from the teacher's
        maps (``role`` teacher) or the student's adapted maps (student, eval mode)."""
        if not self._probe:
            return []
        device = next(self.extractor.parameters()).device
        images, ids = [im.to(device) for im, _, _ in self._probe], [int(i) for _, _, i in self._probe]
        if role == "teacher":
            maps = self.records(images, ids)[0]
        else:
            was = self.student.training
            self.student.eval()
            maps = self.adapted(capture_maps(self.student, images, self.levels)[1])
            self.student.train(was)
        _, logits, boxes, weights = self.extractor(maps, attention=True)
        meta = {"instance_ids": ids, "levels": self.levels, "shapes": [list(m.shape[-2:]) for m in maps],
                "boxes": boxes.cpu().tolist(), "scores": (1 - logits.softmax(-1)[..., 0]).cpu().tolist(),
                "labels": logits[..., 1:].argmax(-1).add(1).cpu().tolist()}
        return [{"name": f"ake_attention/{role}", "array": weights.float().cpu().numpy(), "kind": "query_attention",
                 "dtype": "float32", "role": role, "meta": meta}]
