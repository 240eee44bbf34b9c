"""A novel-class-discovery network (UNO / Cr-KD): a ResNet backbone, a *known* head of
cosine prototypes and H *novel* heads (projection MLP + cosine prototypes), one per clustering.

``heads(x)`` returns (known logits (B, K), novel logits (H, B, N)) as cosine similarities;
``forward(x)`` is the task-agnostic classifier [known, novel of the best head] (B, K + N), the
best head being the one with the lowest running training loss (``head_loss``, set by the
method: an unsupervised choice). Prototypes are renormalised by ``normalize_prototypes()``,
which the method calls after every optimiser step.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kd_engine.models.registry import MODELS, check_positive_int
from kd_engine.models.cnn import ResNet


class Prototypes(nn.Module):
    """Cosine logits: normalised input times the (renormalised-per-step) prototype matrix."""

    def __init__(self, dim: int, count: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(count, dim) / dim ** 0.5)
        self.normalize()

    @torch.no_grad()
    def normalize(self) -> None:
        self.weight.copy_(F.normalize(self.weight, dim=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z, dim=1) @ self.weight.t()


@MODELS.register("ncd_resnet")
class NCDResNet(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int, known: int = 5, width: int = 16,
                 depth: int = 1, heads: int = 4, hidden: int = 64, proj_dim: int = 32):
        super().__init__()
        check_positive_int(known=known, width=width, depth=depth, heads=heads, hidden=hidden, proj_dim=proj_dim)
        if known >= num_classes:
            raise ValueError(f"known ({known}) must be below the number of classes ({num_classes})")
        self.known, self.novel = known, num_classes - known
        self.backbone = ResNet(input_shape, 1, width=width, depth=depth)
        self.backbone.fc = nn.Identity()
        dim = 4 * width
        self.known_head = Prototypes(dim, known)
        self.projectors = nn.ModuleList(nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                                      nn.Linear(hidden, proj_dim)) for _ in range(heads))
        self.novel_heads = nn.ModuleList(Prototypes(proj_dim, self.novel) for _ in range(heads))
        self.register_buffer("head_loss", torch.zeros(heads))
        self.feature_layers = [f"backbone.{n}" for n in self.backbone.feature_layers]
        self.embedding_layer = "backbone.pool"

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(x)
        novel = torch.stack([head(proj(feats)) for proj, head in zip(self.projectors, self.novel_heads)])
        return self.known_head(feats), novel

    def best_head(self) -> int:
        return int(self.head_loss.argmin())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        known, novel = self.heads(x)
        return torch.cat([known, novel[self.best_head()]], dim=1)

    def normalize_prototypes(self) -> None:
        self.known_head.normalize()
        for head in self.novel_heads:
            head.normalize()
