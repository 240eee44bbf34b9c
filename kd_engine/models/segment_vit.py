"""A tiny ViT whose patch tokens are grouped into K segment tokens by slot attention, with a
linear projection into a frozen teacher's (text-aligned) embedding space: the student of ZeroSeg
(paper 4; the grouping design is a reconstruction, the paper publishes no code).

Patch tokens h_n (N of them, one per ``patch`` × ``patch`` square) come from pre-norm transformer
blocks (`kd_engine.models.vit.Block`). Slot attention (Locatello et al., 2020) with K learned
initial slots, ``iterations`` rounds, gives A ∈ ℝ^{N×K}, softmax over the K slots per patch.
Segment k's feature is the A-weighted mean of the patches, g_k = Σ_n A_nk h_n / Σ_n A_nk, and
its embedding z_k = P g_k lives in the teacher's D-dimensional space. With ``grouping: none``
the same ViT has no segment tokens: its image embedding is P(mean_n h_n) and each patch is read
as P h_n (the image-level baseline).

``forward`` gives zero-shot per-pixel logits over [background; classes]: a patch takes the
embedding of its segment (k* = argmax_k A_nk; P h_n without grouping), the class scores are
cos(·, t_c) against the ``class_text`` buffer (the teacher's class prompt embeddings, set by the
method), the background score is the ``threshold`` buffer (chosen on validation by the method),
so argmax gives a class only where the best cosine clears the threshold. ``encode`` returns the
parts the distillation loss and the records need.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kd_engine.models.registry import MODELS, check_positive_int
from kd_engine.models.vit import Attention, Block

GROUPINGS = ("slots", "none")


class WindowAttention(Attention):
    """`Attention` restricted to the patches within ``window`` patches (Chebyshev distance) on
    the patch grid: features stay local, so grouping them groups places, not the whole image."""

    def __init__(self, dim: int, heads: int, grid: tuple[int, int], window: int):
        super().__init__(dim, heads)
        rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
        r, c = rows.flatten(), cols.flatten()
        near = ((r[:, None] - r[None]).abs() <= window) & ((c[:, None] - c[None]).abs() <= window)
        self.register_buffer("bias", torch.zeros(near.shape).masked_fill(~near, float("-inf")), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        probs = self.probs(torch.softmax((q @ k.transpose(-2, -1)) * self.scale + self.bias, dim=-1))
        return self.proj((probs @ v).transpose(1, 2).reshape(b, t, d))


class SlotAttention(nn.Module):
    """K slots compete for N inputs: per round, attention softmax over slots, weighted-mean
    updates, a GRU cell and a residual MLP. Returns the last round's (B, N, K) attention."""

    def __init__(self, dim: int, slots: int, iterations: int):
        super().__init__()
        self.iterations = iterations
        self.scale = dim ** -0.5
        self.init = nn.Parameter(torch.randn(1, slots, dim) * dim ** -0.5)
        self.norm_inputs, self.norm_slots, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.gru = nn.GRUCell(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.probs = nn.Identity()  # tap point for the assignment (B, N, K)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        b, n, d = inputs.shape
        x = self.norm_inputs(inputs)
        k, v = self.to_k(x), self.to_v(x)
        slots = self.init.expand(b, -1, -1)
        attn = None
        for _ in range(self.iterations):
            q = self.to_q(self.norm_slots(slots))
            attn = torch.softmax(k @ q.transpose(1, 2) * self.scale, dim=-1)  # (B, N, K): softmax over slots
            weights = attn / (attn.sum(dim=1, keepdim=True) + 1e-8)
            updates = weights.transpose(1, 2) @ v  # (B, K, d)
            slots = self.gru(updates.reshape(-1, d), slots.reshape(-1, d)).reshape(b, -1, d)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return self.probs(attn)


@MODELS.register("segment_vit")
class SegmentViT(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int, patch: int = 2, dim: int = 32, depth: int = 2,
                 heads: int = 4, mlp_ratio: float = 2.0, segments: int = 6, iterations: int = 3,
                 embed_dim: int = 32, grouping: str = "slots", window: int = 0):
        super().__init__()
        check_positive_int(patch=patch, dim=dim, depth=depth, heads=heads, segments=segments,
                           iterations=iterations, embed_dim=embed_dim)
        if grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {', '.join(GROUPINGS)}, got {grouping!r}")
        if num_classes < 2:
            raise ValueError(f"segment_vit needs background + at least one class, got num_classes={num_classes}")
        c, h, w = (int(s) for s in input_shape)
        if h % patch or w % patch or dim % heads:
            raise ValueError(f"patch {patch} must divide the image size {h}x{w} and heads {heads} the dim {dim}")
        self.patch, self.grid = patch, (h // patch, w // patch)
        self.grouping, self.segments = grouping, segments if grouping == "slots" else 1
        self.patch_embed = nn.Conv2d(c, dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid[0] * self.grid[1], dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, float(mlp_ratio)) for _ in range(depth))
        if not isinstance(window, int) or isinstance(window, bool) or window < 0:
            raise ValueError(f"window must be a non-negative integer (0: global attention), got {window!r}")
        if window:  # local attention (0: every patch sees every patch)
            for block in self.blocks:
                block.attn = WindowAttention(dim, heads, self.grid, window)
        self.norm = nn.LayerNorm(dim)
        self.group = SlotAttention(dim, segments, iterations) if grouping == "slots" else None
        self.project = nn.Linear(dim, embed_dim)  # P: into the teacher's embedding space
        self.register_buffer("class_text", torch.zeros(num_classes - 1, embed_dim))
        self.register_buffer("threshold", torch.zeros(()))
        self.feature_layers = [f"blocks.{i}" for i in range(depth)] + ["norm"]
        self.attention_layers = [f"blocks.{i}.attn.probs" for i in range(depth)]
        self.embedding_layer = "norm"

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """patches h (B, N, d); with grouping also assign A (B, N, K) and segments z = P g (B, K, D);
        always pixel_embed (B, N, D), the embedding each patch is read with, and image (B, D)."""
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:
            h = block(h)
        h = self.norm(h)
        out = {"patches": h}
        if self.group is None:
            out["pixel_embed"] = self.project(h)
            out["image"] = self.project(h.mean(dim=1))
            return out
        a = self.group(h)
        g = (a.transpose(1, 2) @ h) / (a.sum(dim=1).unsqueeze(-1) + 1e-8)  # (B, K, d)
        z = self.project(g)
        top = a.argmax(dim=-1)  # (B, N): k* per patch
        out.update(assign=a, segments=z, image=z.mean(dim=1),
                   pixel_embed=z.gather(1, top.unsqueeze(-1).expand(-1, -1, z.shape[-1])))
        return out

    def pixel_logits(self, pixel_embed: torch.Tensor) -> torch.Tensor:
        """(B, N, D) patch embeddings -> (B, 1 + C, H, W): [threshold; cos(·, t_c)] per pixel."""
        b = pixel_embed.shape[0]
        cos = F.normalize(pixel_embed, dim=-1, eps=1e-8) @ F.normalize(self.class_text, dim=-1, eps=1e-8).T
        logits = torch.cat([self.threshold.expand(b, cos.shape[1], 1), cos], dim=-1)  # (B, N, 1 + C)
        logits = logits.transpose(1, 2).reshape(b, -1, *self.grid)
        return logits.repeat_interleave(self.patch, dim=2).repeat_interleave(self.patch, dim=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pixel_logits(self.encode(x)["pixel_embed"])
