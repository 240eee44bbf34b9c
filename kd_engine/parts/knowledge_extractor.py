"""UniKD's Adaptive Knowledge Extractor (AKE) and the teacher's per-image records it learns from.

The AKE φ is a one-layer detection decoder: Q learnable queries cross-attend (standard
multi-head attention; the paper uses deformable attention) to the tokens of several FPN maps,
giving knowledge embeddings e = φ(F) ∈ R^{Q×d}; a small set-prediction head h turns each
embedding into class logits (index 0 = no object) and a box. A token is its cell's feature
projected to d, plus a learned embedding of its normalised cell centre (x, y) and of its level,
so the queries can say *where* an object is, not only what. ``TeacherRecords`` holds, per
training image, the frozen teacher's FPN maps at the AKE's levels and its top detections (boxes
normalised to [0, 1]): computed once, since a frozen teacher in eval mode always returns the same.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert


class KnowledgeExtractor(nn.Module):
    """φ and h of UniKD: ``forward(maps)`` -> (e (B,Q,d), logits (B,Q,K+1), boxes (B,Q,4)
    normalised xyxy, attention (B,Q,N) averaged over heads, or None unless ``attention``)."""

    def __init__(self, channels: int, num_classes: int, levels: int, queries: int = 8, dim: int = 32,
                 heads: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.project = nn.Linear(channels, dim)
        self.position = nn.Linear(2, dim)
        self.level = nn.Embedding(levels, dim)
        self.queries = nn.Parameter(torch.randn(queries, dim) * dim ** -0.5)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.norm_out = nn.LayerNorm(dim)
        self.classify = nn.Linear(dim, num_classes)
        self.box = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 4))

    def tokens(self, maps: Sequence[Tensor]) -> Tensor:
        """(B, N, d): every cell of every map, finest level first, row-major within a level."""
        out = []
        for index, fmap in enumerate(maps):
            b, _, h, w = fmap.shape
            ys, xs = torch.meshgrid((torch.arange(h, device=fmap.device) + 0.5) / h,
                                    (torch.arange(w, device=fmap.device) + 0.5) / w, indexing="ij")
            centres = torch.stack([xs, ys], -1).reshape(1, h * w, 2).to(fmap.dtype)
            out.append(self.project(fmap.flatten(2).transpose(1, 2)) + self.position(centres)
                       + self.level.weight[index])
        return torch.cat(out, 1)

    def embed(self, maps: Sequence[Tensor], attention: bool = False) -> tuple[Tensor, Tensor | None]:
        tokens = self.tokens(maps)
        queries = self.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        attended, weights = self.attention(queries, tokens, tokens, need_weights=attention)
        e = self.norm(queries + attended)
        return self.norm_out(e + self.ffn(e)), weights

    def predict(self, e: Tensor) -> tuple[Tensor, Tensor]:
        """h: class logits and normalised xyxy boxes (sigmoid centre and size)."""
        return self.classify(e), box_convert(self.box(e).sigmoid(), "cxcywh", "xyxy")

    def forward(self, maps: Sequence[Tensor], attention: bool = False):
        e, weights = self.embed(maps, attention)
        return (e, *self.predict(e), weights)


def capture_maps(model: nn.Module, images: list[Tensor], levels: Sequence[str]):
    """(detections, {level: (B, C, h, w)}) of a detector in its current mode, one pass: the FPN
    maps are caught by a hook on the backbone."""
    caught: "OrderedDict[str, Tensor]" = OrderedDict()
    handle = model.backbone.register_forward_hook(lambda module, args, out: caught.update(out))
    try:
        detections = model(images)
    finally:
        handle.remove()
    return detections, {level: caught[level] for level in levels}


class TeacherRecords:
    """Per training image, filled the first time the image is seen: the teacher's maps at
    ``levels`` and its top-``top_k`` detections with score ≥ ``min_score`` (``{"labels",
    "boxes" normalised xyxy, "scores"}``). ``records(images, ids)`` returns the batch's, running
    the teacher (eval mode, no gradient) only on the images not yet stored."""

    def __init__(self, teacher: nn.Module, levels: Sequence[str], top_k: int, min_score: float):
        self.teacher, self.levels, self.top_k, self.min_score = teacher, list(levels), top_k, min_score
        self.maps: dict[int, list[Tensor]] = {}
        self.detections: dict[int, dict[str, Tensor]] = {}

    @torch.no_grad()
    def _fill(self, images: list[Tensor], ids: list[int]) -> None:
        was_training = self.teacher.training
        self.teacher.eval()
        try:
            detections, maps = capture_maps(self.teacher, images, self.levels)
        finally:
            self.teacher.train(was_training)
        for k, (image, iid, det) in enumerate(zip(images, ids, detections)):
            self.maps[iid] = [maps[level][k:k + 1].detach().clone() for level in self.levels]
            keep = det["scores"] >= self.min_score
            order = det["scores"][keep].argsort(descending=True)[: self.top_k]
            h, w = image.shape[-2:]
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=image.device)
            self.detections[iid] = {"labels": det["labels"][keep][order].clone(),
                                    "boxes": (det["boxes"][keep][order].float() / scale).clamp(0, 1),
                                    "scores": det["scores"][keep][order].clone()}

    def __call__(self, images: list[Tensor], ids: Sequence[int]) -> tuple[list[Tensor], list[dict]]:
        ids = [int(i) for i in ids]
        missing = [k for k, i in enumerate(ids) if i not in self.maps]
        if missing:
            self._fill([images[k] for k in missing], [ids[k] for k in missing])
        maps = [torch.cat([self.maps[i][k] for i in ids]) for k in range(len(self.levels))]
        return maps, [self.detections[i] for i in ids]


__all__ = ["KnowledgeExtractor", "TeacherRecords", "capture_maps"]
