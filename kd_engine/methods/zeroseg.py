"""ZeroSeg (ICCV 2023): open-vocabulary segmentation from CLIP vision-encoder distillation only.

A frozen image–text teacher embeds V views of each training image (the whole image and grid
crops, each resized to the teacher's input; `kd_engine.parts.crop_views`, computed once and
cached). The student (`segment_vit`) groups its patches into K segment tokens z_k = P g_k in the
teacher's space and learns, without any pixel label (a reconstruction: the paper's code is not
public),

    targets: segments   L = Σ_v min_k (1 − cos(z_k, e_v))   (matching: min)
                        or one-to-one views ↔ tokens        (matching: hungarian)
                        + global_weight · (1 − cos(mean_k z_k, e_whole))
    targets: image      L = 1 − cos(image embedding, e_whole)   (one view: the image-level baseline)

(`kd_engine.losses.segment_tokens`). Blank views (no ink) are left out. At evaluation a pixel is
named by its segment's cosine to the teacher's class prompts, background below a threshold
chosen on validation (`kd_engine.parts.zeroshot_seg`); the teacher run on the crop windows is
the reference (``teacher_*`` metrics). Recorded per training image: the token matched to every
view (``view_token_<v>``, −1 blank), the entropy of its segment usage and the number of segments
its patches use, the cosine of its image embedding to the whole-image target; per batch the
entropy of matched-token usage (collapse check). Per evaluated image the same, and for probe
images the assignment map k*(pixel), each segment's zero-shot class and the teacher's map.
"""
from __future__ import annotations

import numpy as np
import torch
from annotated_types import Ge, Interval

from kd_engine.data import build_data
from kd_engine.dense_metrics import iou_per_class, pixel_confusion
from kd_engine.errors import ConfigError
from kd_engine.losses.segment_tokens import (global_token_cosine, hungarian_assignment, usage_entropy,
                                             view_token_costs)
from kd_engine.methods.base import Distiller, StepOutput
from kd_engine.methods.open_vocab import OPEN_VOCAB_METHODS
from kd_engine.methods.registry import METHODS
from kd_engine.params import Param, read_params
from kd_engine.parts.crop_views import blank_views, cached_view_embeddings
from kd_engine.parts.image_text_teacher import shared_image_text_teacher
from kd_engine.parts.zeroshot_seg import choose_threshold, class_cosines, thresholded_labels, window_scores

TARGETS, MATCHINGS = ("segments", "image"), ("min", "hungarian")


@METHODS.register("zeroseg")
@OPEN_VOCAB_METHODS.register("zeroseg")
class ZeroSeg(Distiller):
    needs_teacher = False  # the image–text teacher is the shared cached one, built here
    wants_ids = True
    defaults = {"targets": Param("segments", kind=str), "matching": Param("min", kind=str),
                "grids": Param([1, 2], kind=list), "global_weight": Param(0.0, Ge(0)),
                "blank_level": Param(0.15, Interval(ge=0, le=1)),
                "teacher_epochs": Param(None, Ge(1), kind=int | None)}

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(student, None)
        p = self.p = read_params(cfg.distill.params, self.defaults, "distill.params", "method zeroseg")
        for key, allowed in (("targets", TARGETS), ("matching", MATCHINGS)):
            if p[key] not in allowed:
                raise ConfigError(f"distill.params.{key}: expected one of {', '.join(allowed)}, got {p[key]!r}")
        grids = p["grids"]
        if not grids or grids[0] != 1 or any(not isinstance(g, int) or isinstance(g, bool) or g < 1 for g in grids):
            raise ConfigError(f"distill.params.grids: positive integers starting with 1 (the whole image), got {grids!r}")
        if not hasattr(student, "encode") or not hasattr(student, "class_text"):
            raise ConfigError(f"student.name: method zeroseg needs a student with segment tokens (segment_vit), "
                              f"got {cfg.student.name!r}")
        if p["targets"] == "segments" and student.group is None:
            raise ConfigError("distill.params.targets: 'segments' needs student.params.grouping 'slots' "
                              "(segment tokens); use targets 'image' for a student without them")
        data = build_data(cfg.data, cfg.seed)
        self.splits = {"train": data.train, "val": data.val, "test": data.test}
        teacher_model = shared_image_text_teacher(cfg.cache_dir, p["teacher_epochs"])
        student.class_text.copy_(teacher_model.class_text[: student.class_text.shape[0]])
        split_seed = cfg.data.split_seed if cfg.data.split_seed is not None else cfg.seed
        identity = {"data": cfg.data.model_dump(mode="json", exclude={"batch_size", "eval_batch_size"}),
                    "split_seed": split_seed}
        images = torch.cat([s.x for s in self.splits.values()])
        ids = torch.cat([s.ids for s in self.splits.values()])
        if not torch.equal(ids, torch.arange(len(ids))):
            raise ConfigError(f"data.name: method zeroseg needs instance ids 0..N-1 over the splits, got {cfg.data.name!r}")
        views = cached_view_embeddings(teacher_model.encode_image, images, teacher_model.file_id, identity, grids,
                                       teacher_model.image_size, cfg.cache_dir, floor=p["blank_level"])
        self.register_buffer("views", views, persistent=False)  # (N, V, D) by instance id
        self.register_buffer("blank", blank_views(images, grids, p["blank_level"]), persistent=False)
        self.grids = list(grids)
        self.last: dict[str, dict] = {}

    # -- training -----------------------------------------------------------------------------
    def _decisions(self, out: dict, ids: torch.Tensor) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """(per-image loss, per-image records, (B, V) matched token) of the student's ``encode`` output."""
        views, keep = self.views[ids], ~self.blank[ids]
        whole = views[:, 0]
        records = {"whole_cos": 1.0 - global_token_cosine(out["image"][:, None], whole, reduction="none").detach()}
        match = torch.full(keep.shape, -1, dtype=torch.long, device=keep.device)
        if self.p["targets"] == "image":
            loss = global_token_cosine(out.get("segments", out["image"][:, None]), whole, reduction="none")
        else:
            costs = view_token_costs(out["segments"], views)  # (B, V, K)
            if self.p["matching"] == "hungarian":
                match = hungarian_assignment(costs, keep)
            else:
                match = torch.where(keep, costs.detach().argmin(dim=2), match)
            picked = costs.gather(2, match.clamp_min(0).unsqueeze(2))[..., 0]
            loss = (picked * keep.float()).sum(dim=1)
            if self.p["global_weight"] > 0:
                loss = loss + self.p["global_weight"] * global_token_cosine(out["segments"], whole, reduction="none")
        if "assign" in out:
            a = out["assign"].detach()
            share = a.mean(dim=1)  # (B, K): each token's share of the image's patches
            records["assign_entropy"] = -(share * share.clamp_min(1e-12).log()).sum(dim=1)
            top = a.argmax(dim=2)
            records["segments_used"] = torch.tensor([float(t.unique().numel()) for t in top], device=a.device)
        return loss, records, match

    def forward(self, x, y, maps=None, ids=None) -> StepOutput:
        out = self.student.encode(x)
        ids = ids.to(self.views.device)
        loss, records, match = self._decisions(out, ids)
        per_sample = {"student_loss": loss.detach(), "distill_loss": loss.detach(), **records}
        for v in range(match.shape[1]):
            per_sample[f"view_token_{v}"] = match[:, v].float()
        scalars = {}
        if self.p["targets"] == "segments":
            scalars["train/token_usage_entropy"] = usage_entropy(match, out["segments"].shape[1])
        logits = self.student.pixel_logits(out["pixel_embed"]).detach()
        return StepOutput(logits, {"distill": loss.mean()}, per_sample, scalars=scalars)

    # -- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def _pass(self, split: str) -> dict:
        """The student's encode outputs over a split, in evaluation mode, on the CPU."""
        dataset = self.splits[split]
        was = self.training
        self.eval()
        device = self.views.device
        parts = [self.student.encode(dataset.x[i:i + 256].to(device)) for i in range(0, len(dataset), 256)]
        self.train(was)
        return {k: torch.cat([p[k] for p in parts]).cpu() for k in parts[0]}

    def _pixel_scores(self, out: dict) -> np.ndarray:
        """(N, C, H, W) class cosines of every pixel (its patch's embedding)."""
        cos = class_cosines(out["pixel_embed"], self.student.class_text.cpu())  # (N, P, C)
        gh, gw = self.student.grid
        s = self.student.patch
        maps = cos.transpose(1, 2).reshape(len(cos), -1, gh, gw)
        return maps.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3).numpy()

    def _teacher_scores(self, split: str) -> np.ndarray:
        dataset = self.splits[split]
        return window_scores(self.views[dataset.ids].cpu(), self.student.class_text.cpu(), self.grids,
                             *dataset.x.shape[2:]).numpy()

    @torch.no_grad()
    def evaluation_metrics(self, split: str, task) -> dict[str, float]:
        dataset = self.splits.get(split)
        if dataset is None or not len(dataset) or not len(self.splits["val"]):
            return {}
        val_truth = self.splits["val"].y.numpy()
        threshold, _ = choose_threshold(self._pixel_scores(self._pass("val")), val_truth)
        self.student.threshold.fill_(threshold)  # the task's evaluation reads it through forward
        t_threshold, _ = choose_threshold(self._teacher_scores("val"), val_truth)
        out = self._pass(split)
        ids = dataset.ids.to(self.views.device)
        loss, records, match = self._decisions({k: v.to(self.views.device) for k, v in out.items()}, ids)
        columns = {"view_loss": loss.cpu().numpy(), **{k: v.cpu().numpy() for k, v in records.items()}}
        columns.update({f"view_token_{v}": match[:, v].cpu().numpy() for v in range(match.shape[1])})
        teacher_labels = thresholded_labels(self._teacher_scores(split), t_threshold)
        iou = iou_per_class(pixel_confusion(dataset.y.numpy(), teacher_labels, len(task.data.class_names)))
        self.last[split] = {"columns": columns, "match": match.cpu().numpy(), "out": out,
                            "teacher": teacher_labels}
        metrics = {f"{split}/student_bg_threshold": threshold, f"{split}/teacher_bg_threshold": t_threshold,
                   f"{split}/student_view_loss": float(loss.mean()),
                   f"{split}/teacher_mIoU": float(np.nanmean(iou)),
                   f"{split}/teacher_pixel_acc": float((teacher_labels == dataset.y.numpy()).mean())}
        if self.p["targets"] == "segments":
            metrics[f"{split}/student_token_usage_entropy"] = float(usage_entropy(match.cpu(), out["segments"].shape[1]))
        return metrics

    def segment_columns(self, split: str) -> dict[str, np.ndarray]:
        return dict(self.last.get(split, {}).get("columns", {}))

    def segment_artifacts(self, split: str, probe: int) -> list[dict]:
        if split not in self.last or probe < 1:
            return []
        last, dataset = self.last[split], self.splits[split]
        meta = {"instance_ids": dataset.ids[:probe].tolist(), "split": split, "grids": self.grids}
        out = [dict(name=f"dense/{split}/teacher_mask", array=last["teacher"][:probe], kind="dense_map",
                    dtype="int16", role="teacher",
                    meta={**meta, "map": "teacher_mask", "what": "teacher on crop windows"}),
               dict(name=f"segments/{split}/view_token", array=last["match"][:probe], kind="segment_map",
                    dtype="int16", meta={**meta, "map": "view_token"})]
        if "assign" in last["out"]:
            a, z = last["out"]["assign"][:probe], last["out"]["segments"][:probe]
            s, (gh, gw) = self.student.patch, self.student.grid
            top = a.argmax(dim=2).reshape(-1, gh, gw).repeat_interleave(s, 1).repeat_interleave(s, 2)
            cos = class_cosines(z, self.student.class_text.cpu())  # (n, K, C)
            named = torch.where(cos.max(-1).values > float(self.student.threshold), 1 + cos.argmax(-1), 0)
            out += [dict(name=f"segments/{split}/assign", array=top.numpy(), kind="segment_map", dtype="int16",
                         meta={**meta, "map": "assign"}),
                    dict(name=f"segments/{split}/segment_class", array=named.numpy(), kind="segment_map",
                         dtype="int16", meta={**meta, "map": "segment_class"})]
        return out
