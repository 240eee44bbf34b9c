"""PointNet-lite: a small per-point network for point clouds, cheap enough for a 2-core CPU.

Input (B, N, F) per-point features whose first three columns are the coordinates (used to find
neighbours); output (B, N, num_classes) per-point logits. A shared MLP embeds each point; then
``context`` rounds each concatenate a point's embedding with the max over its ``k`` nearest
neighbours' embeddings (PointNet++/DGCNN-style local context without sampling or grouping
layers), so a point knows the local shape around it; ``features`` is the per-point feature layer
(B, N, ``out_dim``) that methods tap with forward hooks, and ``head`` the linear per-point classifier.
Neighbours come with the input (``neighbours``, (B, N, ≥k) indices the data computed once, since
a kNN search costs more than the network) or, when not given, are found from the input
coordinates in the forward pass, one scene at a time to bound memory.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kd_engine.models.registry import MODELS, check_positive_int


def knn_indices(xyz: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N, k) indices of each point's k nearest points (itself included), by Euclidean distance."""
    k = min(k, xyz.shape[1])
    return torch.stack([torch.cdist(p, p).topk(k, largest=False).indices for p in xyz])


def neighbour_max(h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, N, C): per point, the channel-wise max of ``h`` (B, N, C) over its neighbours ``index`` (B, N, k)."""
    B, N, k = index.shape
    gathered = h.gather(1, index.reshape(B, N * k, 1).expand(-1, -1, h.shape[-1]))
    return gathered.reshape(B, N, k, -1).amax(2)


@MODELS.register("pointnet_lite")
class PointNetLite(nn.Module):
    """shared MLP -> ``context`` × (concat(h, kNN max h) -> Linear + ReLU) -> features -> head."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int = 32, out_dim: int = 32,
                 k: int = 12, context: int = 2):
        super().__init__()
        check_positive_int(width=width, out_dim=out_dim, k=k, context=context)
        in_features = int(input_shape[-1])
        if in_features < 3:
            raise ValueError(f"input_shape: the last axis holds per-point features starting with xyz, got {input_shape}")
        self.k = k
        self.embed = nn.Sequential(nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.context = nn.ModuleList(nn.Sequential(nn.Linear(2 * width, width), nn.ReLU()) for _ in range(context))
        self.features = nn.Linear(width, out_dim)
        self.head = nn.Linear(out_dim, num_classes)
        self.feature_layers = ["embed", *[f"context.{i}" for i in range(context)], "features"]
        self.embedding_layer = "features"

    def forward(self, x: torch.Tensor, neighbours: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"PointNetLite expects (B, N, F) per-point features, got shape {tuple(x.shape)}")
        if neighbours is None:
            with torch.no_grad():
                index = knn_indices(x[..., :3].float(), self.k)
        else:
            index = neighbours[..., : self.k].long()
        h = self.embed(x)
        for layer in self.context:
            h = layer(torch.cat([h, neighbour_max(h, index)], -1))
        return self.head(self.features(h))
