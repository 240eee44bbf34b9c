"""A set-of-objects classifier for 2×2 cell mosaics (WCBC-IOD's miniature detector).

It stands in for a query-based detector (DETR): each cell is an object slot. A small CNN embeds
each cell separately (``embed``: 8×8 pixels -> d), a learned position per cell is added, a
transformer encoder lets the cell tokens attend to one another (``decoder``: the stand-in for a
DETR decoder; its output is the per-object feature f_i the distillers tap), and a linear
``head`` classifies every token into the dataset's classes (digits + background).
Output: (B, cells, num_classes) logits. Dropout is off (tiny model, deterministic runs).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kd_engine.models.registry import MODELS, check_positive_int


@MODELS.register("cell_transformer")
class CellTransformer(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int = 16, dim: int = 32,
                 layers: int = 2, heads: int = 4, cell: int = 8):
        super().__init__()
        check_positive_int(width=width, dim=dim, layers=layers, heads=heads, cell=cell)
        channels, height, wide = (int(s) for s in input_shape)
        if height % cell or wide % cell or dim % heads:
            raise ValueError(f"cell {cell} must divide the image size {height}x{wide} and heads {heads} the dim {dim}")
        self.cell, self.grid = cell, (height // cell, wide // cell)
        self.embed = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(width * (cell // 2) ** 2, dim))
        self.position = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], dim))
        nn.init.normal_(self.position, std=0.02)
        block = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.decoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)

    def cells(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B·cells, C, cell, cell), cells in row-major order."""
        b, c = x.shape[:2]
        k = self.cell
        patches = x.unfold(2, k, k).unfold(3, k, k)  # (B, C, gh, gw, k, k)
        return patches.permute(0, 2, 3, 1, 4, 5).reshape(b * self.grid[0] * self.grid[1], c, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(self.cells(x)).view(x.shape[0], -1, self.position.shape[-1]) + self.position
        return self.head(self.decoder(tokens))
