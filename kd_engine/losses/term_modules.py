"""Distillation terms that own a module: the ``module`` input kind.

Some losses need trainable parts (VID's regressor and variances, OFD's connector, ReviewKD's
fusion modules) or state (CRD's memory bank), or read several layers at once (KDSVD, ReviewKD).
Such a term is registered with a module class instead of a function. The distiller builds one
instance per configured term from a ``TermSetup`` (the class's keyword arguments are the term's
``params``), keeps it as the term's owned module, so it is trained with the student and saved in
the training checkpoint, and calls it with a ``TermBatch``; it returns one loss value per sample.
The formulas themselves are the pure functions of ``kd_engine.losses``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt
from torch import nn

from kd_engine.errors import ConfigError

from .feature_kernel import kdsvd, pool_to_common
from .learned import hcl, ofd, ofd_margin, vid
from kd_engine.losses.term_registry import term


@dataclass
class TermSetup:
    """What a module term may read when it is built."""

    field: str                 # e.g. "distill.terms.2", for error messages
    loss: str                  # the registered name, e.g. "vid"
    student: nn.Module
    teacher: nn.Module
    input_shape: tuple
    student_layer: str | None  # as configured; several layers are comma-separated
    teacher_layer: str | None
    cfg: Any = None            # the experiment config (CRD reads the training set's ids from it)

    def layers(self, side: str, default: str | None = None, at_least: int = 1) -> list[str]:
        """The configured layer names of ``side`` ("student"/"teacher"), split at commas."""
        raw = getattr(self, f"{side}_layer") or default
        names = [n.strip() for n in (raw or "").split(",") if n.strip()]
        if len(names) < at_least:
            raise ConfigError(f"{self.field}.{side}_layer: loss {self.loss} needs "
                              f"{'a layer' if at_least == 1 else f'{at_least}+ comma-separated layers'}"
                              f", got {raw!r}")
        return names

    def shapes(self, side: str, names: list[str]) -> list[tuple[int, ...]]:
        from kd_engine.models import layer_shapes  # models import the loss registry's users

        model = self.student if side == "student" else self.teacher
        found = layer_shapes(model, self.input_shape, names)
        return [tuple(found[n]) for n in names]

    def fail(self, message: str) -> ConfigError:
        return ConfigError(f"{self.field}: loss {self.loss}: {message}")


@dataclass
class TermBatch:
    """What a module term reads each step: logits, tapped features by layer name, instance ids."""

    student_logits: torch.Tensor
    teacher_logits: torch.Tensor
    target: torch.Tensor
    student_features: dict[str, torch.Tensor]
    teacher_features: dict[str, torch.Tensor]
    ids: torch.Tensor | None = None


class ModuleTerm(nn.Module):
    """Base: the layers read on each side, and whether instance ids are needed."""

    wants_ids = False

    def __init__(self, student_layers: list[str], teacher_layers: list[str]):
        super().__init__()
        self.student_layers, self.teacher_layers = list(student_layers), list(teacher_layers)

    def features(self, batch: TermBatch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return ([batch.student_features[n].float() for n in self.student_layers],
                [batch.teacher_features[n].float() for n in self.teacher_layers])


def _single_map(setup: TermSetup) -> tuple[list[str], list[str], tuple, tuple]:
    """One layer per side, each a (C, H, W) map: (student names, teacher names, shapes)."""
    s_names, t_names = setup.layers("student"), setup.layers("teacher")
    if len(s_names) != 1 or len(t_names) != 1:
        raise setup.fail(f"reads one layer per side; got {s_names} and {t_names}")
    s_shape, = setup.shapes("student", s_names)
    t_shape, = setup.shapes("teacher", t_names)
    if len(s_shape) != 3 or len(t_shape) != 3:
        raise setup.fail(f"needs (C, H, W) maps; the layers give {s_shape} and {t_shape}")
    return s_names, t_names, s_shape, t_shape


@term("vid", "module")
class VIDTerm(ModuleTerm):
    """VID's learnable parts: the mean regressor μ(s) (three 1×1 convs with ReLUs between) and
    one variance per teacher channel, σ_c² = softplus(α_c) + ε, starting at
    ``init_variance``. The larger spatial map is average-pooled to the smaller first."""

    def __init__(self, setup: TermSetup, mid_channels: Annotated[int, Ge(0)] = 0,
                 init_variance: Annotated[float, Gt(0)] = 5.0, eps: Annotated[float, Gt(0)] = 1e-5):
        s_names, t_names, s_shape, t_shape = _single_map(setup)
        super().__init__(s_names, t_names)
        if init_variance <= eps:
            raise setup.fail(f"init_variance must exceed eps ({eps}), got {init_variance}")
        mid = mid_channels or t_shape[0]  # 0: as wide as the teacher
        self.regressor = nn.Sequential(nn.Conv2d(s_shape[0], mid, 1), nn.ReLU(),
                                       nn.Conv2d(mid, mid, 1), nn.ReLU(), nn.Conv2d(mid, t_shape[0], 1))
        alpha = float(np.log(np.expm1(init_variance - eps)))  # softplus⁻¹(init_variance − ε)
        self.alpha = nn.Parameter(torch.full((t_shape[0],), alpha))
        self.eps = eps

    def variance(self) -> torch.Tensor:
        return F.softplus(self.alpha) + self.eps

    def forward(self, batch: TermBatch) -> torch.Tensor:
        (s,), (t,) = self.features(batch)
        s, t = pool_to_common(s, t, "vid")
        return vid(self.regressor(s), t, self.variance(), reduction="none")


@term("ofd", "module")
class OFDTerm(ModuleTerm):
    """OFD's connector (1×1 conv + BatchNorm, student to teacher width) and the teacher margin.

    Tap pre-ReLU maps on both sides. The margin comes from a teacher BatchNorm: ``teacher_bn``
    names it, or, left empty, ``teacher_layer`` must itself be a BatchNorm (its output is then
    exactly the distribution the margin assumes). It is computed once: the teacher is frozen."""

    def __init__(self, setup: TermSetup, teacher_bn: str = ""):
        s_names, t_names, s_shape, t_shape = _single_map(setup)
        super().__init__(s_names, t_names)
        if s_shape[1:] != t_shape[1:]:
            raise setup.fail(f"needs maps of equal H, W; the layers give {s_shape} and {t_shape}")
        bn_name = teacher_bn or self.teacher_layers[0]
        bn = dict(setup.teacher.named_modules()).get(bn_name)
        if not isinstance(bn, nn.BatchNorm2d):
            raise ConfigError(f"{setup.field}.params.teacher_bn: ofd reads its margin from a teacher "
                              f"BatchNorm2d; {bn_name!r} is {type(bn).__name__ if bn else 'not a layer'}")
        if bn.num_features != t_shape[0]:
            raise setup.fail(f"teacher_bn {bn_name!r} has {bn.num_features} channels, the teacher map {t_shape[0]}")
        self.connector = nn.Sequential(nn.Conv2d(s_shape[0], t_shape[0], 1, bias=False),
                                       nn.BatchNorm2d(t_shape[0]))
        self.register_buffer("margin", ofd_margin(bn.bias.detach().float(), bn.weight.detach().float()))

    def forward(self, batch: TermBatch) -> torch.Tensor:
        (s,), (t,) = self.features(batch)
        return ofd(self.connector(s), t, self.margin, reduction="none")


@term("kdsvd", "module")
class KDSVDTerm(ModuleTerm):
    """KDSVD reads two or more layers per side (comma-separated, shallow to deep); no weights."""

    def __init__(self, setup: TermSetup, k: Annotated[int, Ge(1)] = 1,
                 sigma: Annotated[float, Gt(0)] = 8.0):
        s_names, t_names = setup.layers("student", at_least=2), setup.layers("teacher", at_least=2)
        super().__init__(s_names, t_names)
        if len(s_names) != len(t_names):
            raise setup.fail(f"needs as many student as teacher layers; got {len(s_names)} and {len(t_names)}")
        for s_shape, t_shape in zip(setup.shapes("student", s_names), setup.shapes("teacher", t_names)):
            if len(s_shape) != 3 or s_shape[0] != t_shape[0] or len(t_shape) != 3:
                raise setup.fail(f"needs (C, H, W) maps with equal channels at each point; got {s_shape} and {t_shape}")
        self.k, self.sigma = k, sigma

    def forward(self, batch: TermBatch) -> torch.Tensor:
        s, t = self.features(batch)
        return kdsvd(s, t, self.k, self.sigma, reduction="none")


class _Fusion(nn.Module):
    """ReviewKD's attention-based fusion (ABF) for one stage.

    The student map is reduced to ``mid`` channels (1×1 conv + BN); for all but the deepest
    stage it is fused with the deeper stage's fused map (nearest-upsampled) by two per-position
    attention weights (1×1 conv on both, sigmoid); a 3×3 conv + BN maps the result to the
    teacher's width. Returns (output for the loss, fused map passed to the shallower stage)."""

    def __init__(self, cin: int, mid: int, cout: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.expand = nn.Sequential(nn.Conv2d(mid, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.attention = nn.Sequential(nn.Conv2d(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None

    def forward(self, x: torch.Tensor, deeper: torch.Tensor | None):
        x = self.reduce(x)
        if self.attention is not None and deeper is not None:
            deeper = F.interpolate(deeper, size=x.shape[-2:], mode="nearest")
            weights = self.attention(torch.cat([x, deeper], dim=1))
            x = x * weights[:, :1] + deeper * weights[:, 1:]
        return self.expand(x), x


def _as_map(x: torch.Tensor) -> torch.Tensor:
    """(B, C) vectors (a pooled embedding) as (B, C, 1, 1) maps; maps unchanged."""
    return x.view(*x.shape, 1, 1) if x.dim() == 2 else x


@term("reviewkd", "module")
class ReviewKDTerm(ModuleTerm):
    """ReviewKD (Chen et al., CVPR 2021): knowledge review by attention-based fusion + HCL.

    Layers are comma-separated, shallow to deep, equally many per side (a pooled embedding may be
    the deepest, read as a 1×1 map). The student's stages are fused from the deepest down, each
    stage's fused output is compared with the teacher's map at the same stage by the
    hierarchical context loss (``hcl``); matching stages need equal spatial sizes."""

    def __init__(self, setup: TermSetup, mid_channels: Annotated[int, Ge(1)] = 64):
        s_names, t_names = setup.layers("student", at_least=1), setup.layers("teacher", at_least=1)
        super().__init__(s_names, t_names)
        if len(s_names) != len(t_names):
            raise setup.fail(f"needs as many student as teacher layers; got {len(s_names)} and {len(t_names)}")
        fusions = []
        for i, (s_shape, t_shape) in enumerate(zip(setup.shapes("student", s_names),
                                                  setup.shapes("teacher", t_names))):
            s_shape, t_shape = (s_shape + (1, 1))[:3], (t_shape + (1, 1))[:3]
            if s_shape[1:] != t_shape[1:]:
                raise setup.fail(f"stage {i}: student {s_names[i]!r} {s_shape} and teacher "
                                 f"{t_names[i]!r} {t_shape} need equal H, W")
            fusions.append(_Fusion(s_shape[0], mid_channels, t_shape[0], fuse=i < len(s_names) - 1))
        self.fusions = nn.ModuleList(fusions)

    def forward(self, batch: TermBatch) -> torch.Tensor:
        s, t = self.features(batch)
        outputs, deeper = [None] * len(s), None
        for i in reversed(range(len(s))):
            outputs[i], deeper = self.fusions[i](_as_map(s[i]), deeper)
        return hcl(outputs, [_as_map(x) for x in t], reduction="none")
