"""1-D CNNs for per-azimuth dense prediction of rooms (`kd_engine.data.room_echoes`).

Both models return (B, 1 + K, A): channel 0 the depth per azimuth (metres), channels 1..K the
class logits per azimuth (wall, obstacle). They read their own channels of the room input, so a
panorama teacher and an echo student take the same batches.

- ``panorama_cnn`` (the teacher): reads channels 2–4, positions [0, A) (depth, wall, obstacle
  per azimuth); three circular convolutions along azimuth (``layer1``..``layer3``, width
  ``width``) and a 1×1 head. Its feature maps are indexed by azimuth.
- ``echo_cnn`` (the student): reads channels 0–1 (left and right echoes, T time bins).
  ``stage1`` (two stride-2 convolutions: T/4 tokens) and ``stage2`` (one more: T/8 tokens) are
  indexed by echo **time**. The ``neck`` maps the stage-2 tokens to an azimuth-indexed map by
  one learned linear map over the flattened sequence (every azimuth may read every time), and
  the ``decoder`` (two circular convolutions along azimuth) and the head predict from it.
  With ``aligned`` stages, a `QueryAligner` per stage (A learnable azimuth queries that
  cross-attend over that stage's tokens) gives an aligned map Ŝ (B, dim, A) that is added to the
  neck's output through a 1×1 convolution, so the decoder consumes it (the SAM architecture;
  with no distillation loss on Ŝ it is only extra capacity). The aligners' attention is tapped at
  ``aligners.<stage>.probs`` (B, A, tokens) and Ŝ at ``aligners.<stage>.out``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kd_engine.models.registry import MODELS, check_positive_int

STAGES = ("stage1", "stage2")


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, circular: bool = False) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(c_in, c_out, kernel, stride, kernel // 2, bias=False,
                                   padding_mode="circular" if circular else "zeros"),
                         nn.BatchNorm1d(c_out), nn.ReLU())


class QueryAligner(nn.Module):
    """Ŝ = W_o · softmax(Q K^T / √d) V with Q (A, d) learnable queries, one per azimuth, and
    K = W_k(tokens) + P, V = W_v(tokens) + P (P a learned embedding of each token's position in
    time, so a query can read *when* an echo arrived, which is the depth). Returns (B, d, A)."""

    def __init__(self, token_dim: int, tokens: int, dim: int, queries: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(queries, dim) * dim ** -0.5)
        self.position = nn.Parameter(torch.randn(tokens, dim) * 0.02)
        self.key, self.value = nn.Linear(token_dim, dim), nn.Linear(token_dim, dim)
        self.project = nn.Linear(dim, dim)
        self.probs = nn.Identity()  # tap: (B, A, tokens) attention of each azimuth over echo time
        self.out = nn.Identity()  # tap: (B, d, A) the aligned map Ŝ
        self.scale = dim ** -0.5

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        seq = tokens.transpose(1, 2)  # (B, N, C)
        keys, values = self.key(seq) + self.position, self.value(seq) + self.position
        probs = self.probs(torch.softmax(self.queries @ keys.transpose(1, 2) * self.scale, dim=-1))
        return self.out(self.project(probs @ values).transpose(1, 2))


@MODELS.register("panorama_cnn")
class PanoramaCNN(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int = 32, azimuths: int = 64):
        super().__init__()
        check_positive_int(width=width, azimuths=azimuths)
        if len(input_shape) != 2 or input_shape[0] < 5 or input_shape[1] < azimuths:
            raise ValueError(f"input_shape must be (5, T >= azimuths={azimuths}) room inputs, got {tuple(input_shape)}")
        self.azimuths = azimuths
        self.layer1 = _conv(3, width, 5, circular=True)
        self.layer2 = _conv(width, width, 5, circular=True)
        self.layer3 = _conv(width, width, 5, circular=True)
        self.head = nn.Conv1d(width, 1 + num_classes, 1)
        self.feature_layers = ["layer1", "layer2", "layer3"]
        self.embedding_layer = "layer3"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer3(self.layer2(self.layer1(x[:, 2:5, : self.azimuths]))))


@MODELS.register("echo_cnn")
class EchoCNN(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int = 32, dim: int = 32,
                 azimuths: int = 64, neck_width: int = 8, aligned: list[str] | None = None):
        super().__init__()
        check_positive_int(width=width, dim=dim, azimuths=azimuths, neck_width=neck_width)
        if len(input_shape) != 2 or input_shape[1] % 8:
            raise ValueError(f"input_shape must be (channels, T) with T a multiple of 8, got {tuple(input_shape)}")
        self.aligned = list(aligned or [])
        if not set(self.aligned) <= set(STAGES) or len(set(self.aligned)) != len(self.aligned):
            raise ValueError(f"aligned must list distinct stages of {list(STAGES)}, got {aligned!r}")
        bins, self.azimuths, self.width = int(input_shape[1]), azimuths, width
        self.stage1 = nn.Sequential(_conv(2, width, 7, 2), _conv(width, width, 5, 2))
        self.stage2 = _conv(width, width, 5, 2)
        self.squeeze = nn.Conv1d(width, neck_width, 1)
        self.neck = nn.Linear(neck_width * bins // 8, width * azimuths)
        tokens = {"stage1": bins // 4, "stage2": bins // 8}
        self.aligners = nn.ModuleDict({s: QueryAligner(width, tokens[s], dim, azimuths) for s in self.aligned})
        self.fuse = nn.ModuleDict({s: nn.Conv1d(dim, width, 1) for s in self.aligned})
        self.decoder = nn.Sequential(_conv(width, width, 5, circular=True), _conv(width, width, 5, circular=True))
        self.head = nn.Conv1d(width, 1 + num_classes, 1)
        self.feature_layers = ["stage1", "stage2", "decoder"] + [f"aligners.{s}.out" for s in self.aligned]
        self.attention_layers = [f"aligners.{s}.probs" for s in self.aligned]
        self.embedding_layer = "decoder"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = {"stage1": self.stage1(x[:, :2])}
        tokens["stage2"] = self.stage2(tokens["stage1"])
        z = self.neck(self.squeeze(tokens["stage2"]).flatten(1)).view(len(x), self.width, self.azimuths)
        for stage in self.aligned:
            z = z + self.fuse[stage](self.aligners[stage](tokens[stage]))
        return self.head(self.decoder(z))
