"""Weight inheritance (TinyCLIP's manual inheritance): start a narrower, shallower transformer
from a subset of a trained teacher's weights instead of from random numbers.

- **Depth.** A stack of depth_T blocks gives depth_S blocks: step = ⌊depth_T / depth_S⌋ and the
  student's block i takes teacher block i·step (0, step, 2·step, …).
- **Width.** Every other tensor keeps the *leading* slice along every dimension (the first
  d_S of d_T channels, the first tokens' positions, the first rows of an embedding table).
- **Attention.** A fused qkv weight (3·d, d_in) holds q, k and v one after the other, each as
  heads × head_dim rows: it is viewed as (3, heads, head_dim, d_in), the leading heads and head
  dims of each of q, k, v are kept, and it is flattened back (a plain leading slice would take
  q's rows only). The output projection's input columns are viewed (d_out, heads, head_dim) the
  same way, so the kept heads stay matched to their projection columns.

`inherit` works on any two modules of one structure whose stacks are ``nn.ModuleList``s named
``blocks`` (the engine's ViT and the two-tower text tower), given the student's and teacher's
head counts per stack prefix; it copies in place and returns, per student tensor, the teacher
tensor it came from (for the run's metadata and tests).
"""
from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import nn

_BLOCK = re.compile(r"^(.*?)blocks\.(\d+)\.(.*)$")


def depth_map(teacher_depth: int, student_depth: int) -> list[int]:
    """Teacher block of each student block: 0, step, 2·step, … with step = ⌊depth_T / depth_S⌋."""
    if not 1 <= student_depth <= teacher_depth:
        raise ValueError(f"student depth {student_depth} must be in [1, teacher depth {teacher_depth}]")
    step = teacher_depth // student_depth
    return [i * step for i in range(student_depth)]


def leading_slice(source: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The leading ``shape`` block of ``source`` along every dimension."""
    if source.dim() != len(shape) or any(s > t for s, t in zip(shape, source.shape)):
        raise ValueError(f"cannot take a {tuple(shape)} slice of a {tuple(source.shape)} tensor")
    return source[tuple(slice(0, s) for s in shape)]


def head_slice(source: torch.Tensor, shape: torch.Size, heads_t: int, heads_s: int, fused: int) -> torch.Tensor:
    """Leading heads and head dims of a (fused·heads·head_dim, …) tensor (rows: qkv weight or
    bias with fused = 3; the projection's transposed columns with fused = 1), then the leading
    slice of the remaining dimensions."""
    rows_t, rows_s = source.shape[0], shape[0]
    hd_t, hd_s = rows_t // (fused * heads_t), rows_s // (fused * heads_s)
    if heads_s > heads_t or hd_s > hd_t or rows_t != fused * heads_t * hd_t or rows_s != fused * heads_s * hd_s:
        raise ValueError(f"cannot keep {heads_s} heads of {hd_s} dims from {heads_t} heads of {hd_t} dims")
    grouped = source.reshape(fused, heads_t, hd_t, *source.shape[1:])[:, :heads_s, :hd_s]
    return leading_slice(grouped.reshape(rows_s, *source.shape[1:]), shape)


def _teacher_name(name: str, maps: Mapping[str, list[int]]) -> str:
    match = _BLOCK.match(name)
    if not match:
        return name
    prefix, index, rest = match.groups()
    return f"{prefix}blocks.{maps[prefix][int(index)]}.{rest}"


def _depths(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Blocks per stack prefix ("image.", "text.") of a state dict."""
    out: dict[str, int] = {}
    for name in state:
        match = _BLOCK.match(name)
        if match:
            out[match.group(1)] = max(out.get(match.group(1), 0), int(match.group(2)) + 1)
    return out


def _heads(name: str, heads: Mapping[str, int]) -> int:
    return next(v for prefix, v in sorted(heads.items(), key=lambda kv: -len(kv[0])) if name.startswith(prefix))


@torch.no_grad()
def inherit(student: nn.Module, teacher: nn.Module, student_heads: Mapping[str, int],
            teacher_heads: Mapping[str, int]) -> dict[str, str]:
    """Copy the teacher's chosen slices into ``student`` in place (see the module docstring).
    ``*_heads`` map a parameter-name prefix (``"image."``, ``"text."``) to that stack's heads."""
    t_state, s_state = teacher.state_dict(), student.state_dict()
    t_depth = _depths(t_state)
    maps = {prefix: depth_map(t_depth.get(prefix, 0), depth) for prefix, depth in _depths(s_state).items()}
    sources = {}
    for name, target in s_state.items():
        source_name = _teacher_name(name, maps)
        if source_name not in t_state:
            raise ValueError(f"teacher has no tensor {source_name} for the student's {name}")
        source = t_state[source_name]
        if name.endswith("attn.qkv.weight") or name.endswith("attn.qkv.bias"):
            value = head_slice(source, target.shape, _heads(name, teacher_heads), _heads(name, student_heads), 3)
        elif name.endswith("attn.proj.weight"):
            value = head_slice(source.T, target.T.shape, _heads(name, teacher_heads), _heads(name, student_heads), 1).T
        else:
            value = leading_slice(source, target.shape)
        target.copy_(value)
        sources[name] = source_name
    return sources
