"""Zhang & Ma (ICLR 2021) feature distillation for detectors, per FPN level and per image.

The official code reduces each term over the whole batch (a root or L2 norm of a batch sum), so
no per-image weight can multiply it. AID needs one value per (image, level), so every term here
is computed per image: shape (B,) per level (AID's "per-image form"). For B similar
images this is about 1/sqrt(B) of the batch form; every arm must therefore use this same form.

Pure functions hold the attention/mask math; ``FeatureDistillHead`` holds the trainable parts
(adapters f, g, k, h and the two non-local blocks) and returns ``{term: {level: (B,)}}``.
Teacher features are targets and are detached.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TERMS = ("am", "at_ch", "at_sp", "nl")

# AID's table of base settings (tau and per-term weights; "at" applies to both the channel and spatial
# attention-transfer terms). "miniature_measured" is the prototype's setting (NL omitted).
def _row(tau: float, am: float, at: float, nl: float) -> dict[str, float]:
    return {"tau": tau, "am": am, "at_ch": at, "at_sp": at, "nl": nl}


ZHANG_MA_DEFAULTS: dict[str, dict[str, float]] = {
    "single_stage_baseline": _row(0.1, 4.2e-4, 0.024, 4.2e-4),
    "single_stage_aid": _row(0.1, 5.6e-4, 0.024, 4.9e-4),
    "two_stage_baseline": _row(0.5, 4e-5, 2e-3, 2e-5),
    "two_stage_aid": _row(0.5, 4e-5, 8e-3, 4e-5),
    "reimplementation": _row(0.5, 7e-5, 4e-3, 7e-5),
    "miniature_measured": _row(0.5, 4.2e-4, 0.024, 0.0),
}


def safe_sqrt(x: Tensor) -> Tensor:
    """sqrt with value 0 and a finite (zero) gradient at 0, so identical maps give no NaN grads."""
    pos = x > 0
    return torch.where(pos, torch.where(pos, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def per_image_l2(diff: Tensor) -> Tensor:
    """L2 norm of each image's slice: (B, ...) -> (B,)."""
    return safe_sqrt(diff.flatten(1).pow(2).sum(1))


def spatial_attention(a: Tensor) -> Tensor:
    """G_sp = mean over channels of |A|: (B, C, H, W) -> (B, H, W)."""
    return a.abs().mean(1)


def channel_attention(a: Tensor) -> Tensor:
    """G_ch = mean over positions of |A|: (B, C, H, W) -> (B, C)."""
    return a.abs().mean((2, 3))


def spatial_mask(a: Tensor, tau: float) -> Tensor:
    """M_sp = HW * softmax(G_sp / tau) over positions; mean 1, so uniform attention gives 1s."""
    B, _, H, W = a.shape
    return (H * W * torch.softmax(spatial_attention(a).flatten(1) / tau, dim=1)).view(B, H, W)


def channel_mask(a: Tensor, tau: float) -> Tensor:
    """M_ch = C * softmax(G_ch / tau) over channels; mean 1."""
    return a.shape[1] * torch.softmax(channel_attention(a) / tau, dim=1)


def attention_masks(a_t: Tensor, a_s: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """Teacher-student averaged masks (the official code's form), detached: (B,H,W), (B,C)."""
    m_sp = 0.5 * (spatial_mask(a_t, tau) + spatial_mask(a_s, tau))
    m_ch = 0.5 * (channel_mask(a_t, tau) + channel_mask(a_s, tau))
    return m_sp.detach(), m_ch.detach()


def attention_masked_loss(a_t: Tensor, a_s_adapted: Tensor, m_sp: Tensor,
                          m_ch: Tensor | None = None) -> Tensor:
    """L_AM per image = sqrt(sum_chw M_sp M_ch (A^T - f(A^S))^2); ``m_ch=None`` drops M_ch."""
    if a_t.shape != a_s_adapted.shape:
        raise ValueError(f"teacher map {tuple(a_t.shape)} and adapted student map "
                         f"{tuple(a_s_adapted.shape)} differ")
    w = m_sp[:, None]
    if m_ch is not None:
        w = w * m_ch[:, :, None, None]
    return safe_sqrt((w * (a_t - a_s_adapted).pow(2)).flatten(1).sum(1))


def attention_transfer_losses(a_t: Tensor, a_s: Tensor, g: nn.Module,
                              k: nn.Module) -> tuple[Tensor, Tensor]:
    """Code-form attention transfer per image (signed means through adapters):
    channel ||mean_hw A^T - g(mean_hw A^S)||_2 and spatial ||mean_c A^T - k(mean_c A^S)||_2."""
    at_ch = per_image_l2(a_t.mean((2, 3)) - g(a_s.mean((2, 3))))
    at_sp = per_image_l2(a_t.mean(1, keepdim=True) - k(a_s.mean(1, keepdim=True)))
    return at_ch, at_sp


class NonLocalBlock(nn.Module):
    """Embedded dot-product non-local block: x + W(f(theta(x), phi(x)) g(x)), f = theta^T phi / N.

    phi and g are max-pool sub-sampled by ``pool`` (clipped to the map size); N is the number
    of sub-sampled positions. W's BatchNorm weight starts at 0, so the block starts as identity.
    In train mode that BatchNorm couples the images of a batch (as in the original); in eval
    mode every image is independent.
    """

    def __init__(self, channels: int, inter_channels: int, pool: int = 1) -> None:
        super().__init__()
        self.theta = nn.Conv2d(channels, inter_channels, 1)
        self.phi = nn.Conv2d(channels, inter_channels, 1)
        self.g = nn.Conv2d(channels, inter_channels, 1)
        self.W = nn.Sequential(nn.Conv2d(inter_channels, channels, 1), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)
        self.pool = int(pool)

    def _sub(self, x: Tensor) -> Tensor:
        if self.pool <= 1:
            return x
        k = (min(self.pool, x.shape[-2]), min(self.pool, x.shape[-1]))
        return F.max_pool2d(x, k, k, ceil_mode=True)

    def forward(self, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (B, HW, Ci)
        phi = self._sub(self.phi(x)).flatten(2)  # (B, Ci, M)
        g = self._sub(self.g(x)).flatten(2).transpose(1, 2)  # (B, M, Ci)
        y = (theta @ phi / phi.shape[-1]) @ g  # (B, HW, Ci)
        return x + self.W(y.transpose(1, 2).reshape(B, -1, H, W))


def _per_level(value, levels: Sequence[str], name: str) -> dict[str, int]:
    if isinstance(value, Mapping):
        missing = [lv for lv in levels if lv not in value]
        if missing:
            raise ValueError(f"{name}: no value for level(s) {missing}")
        return {lv: int(value[lv]) for lv in levels}
    if isinstance(value, int):
        return {lv: value for lv in levels}
    value = list(value)
    if len(value) != len(levels):
        raise ValueError(f"{name}: expected {len(levels)} values (one per level), got {len(value)}")
    return {lv: int(v) for lv, v in zip(levels, value)}


class FeatureDistillHead(nn.Module):
    """Trainable side of Zhang & Ma distillation over FPN ``levels``.

    Per level: f (1x1 conv C_s->C_t) for L_AM, g (Linear C_s->C_t) and k (3x3 conv 1->1) for
    L_AT, and, with ``use_nonlocal``, NL_T, NL_S and h (1x1 conv C_s->C_t) for L_NL. Defaults
    follow this miniature's design: NL inner channels C/4, max-pool 2 on the finest level only.
    If C_s != C_t the student's channel mask is taken from f(A^S) (the masks are averaged in
    the teacher's channel space). ``forward`` returns ``{term: {level: (B,)}}``.
    """

    def __init__(self, levels: Sequence[str], channels_s, channels_t=None, tau: float = 0.5,
                 use_channel_mask: bool = True, use_nonlocal: bool = True,
                 nl_inter_channels=None, nl_pool=None) -> None:
        super().__init__()
        self.levels = [str(lv) for lv in levels]
        if not self.levels or any("." in lv or not lv for lv in self.levels):
            raise ValueError(f"levels must be non-empty names without '.', got {levels!r}")
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau!r}")
        cs = _per_level(channels_s, self.levels, "channels_s")
        ct = _per_level(channels_s if channels_t is None else channels_t, self.levels, "channels_t")
        self.tau = float(tau)
        self.use_channel_mask, self.use_nonlocal = use_channel_mask, use_nonlocal
        lvs = self.levels
        self.adapt = nn.ModuleDict({lv: nn.Conv2d(cs[lv], ct[lv], 1) for lv in lvs})
        self.channel_adapt = nn.ModuleDict({lv: nn.Linear(cs[lv], ct[lv]) for lv in lvs})
        self.spatial_adapt = nn.ModuleDict({lv: nn.Conv2d(1, 1, 3, padding=1) for lv in lvs})
        self.same_channels = {lv: cs[lv] == ct[lv] for lv in self.levels}
        if use_nonlocal:
            pools = _per_level(nl_pool if nl_pool is not None else [2] + [1] * (len(lvs) - 1),
                               lvs, "nl_pool")
            if nl_inter_channels is None:
                inner_t = {lv: max(1, ct[lv] // 4) for lv in lvs}
            else:
                inner_t = _per_level(nl_inter_channels, lvs, "nl_inter_channels")
            # The student's block keeps the teacher's inner/outer channel ratio.
            inner_s = {lv: max(1, round(cs[lv] * inner_t[lv] / ct[lv])) for lv in lvs}
            self.nl_t = nn.ModuleDict({lv: NonLocalBlock(ct[lv], inner_t[lv], pools[lv])
                                       for lv in lvs})
            self.nl_s = nn.ModuleDict({lv: NonLocalBlock(cs[lv], inner_s[lv], pools[lv])
                                       for lv in lvs})
            self.nl_adapt = nn.ModuleDict({lv: nn.Conv2d(cs[lv], ct[lv], 1) for lv in lvs})

    def forward(self, feats_s: Mapping[str, Tensor], feats_t: Mapping[str, Tensor],
                am_mask: Mapping[str, Tensor] | None = None) -> dict[str, dict[str, Tensor]]:
        """``am_mask`` ({level: (B, H, W)}, e.g. AID's per-GT weights) multiplies L_AM's
        spatial mask; the other terms are global per image and do not see it."""
        out: dict[str, dict[str, Tensor]] = {t: {} for t in TERMS if t != "nl" or self.use_nonlocal}
        for lv in self.levels:
            if lv not in feats_s or lv not in feats_t:
                raise KeyError(f"level {lv!r} missing from student or teacher features "
                               f"(student: {list(feats_s)}, teacher: {list(feats_t)})")
            a_s, a_t = feats_s[lv], feats_t[lv].detach()
            if a_s.shape[-2:] != a_t.shape[-2:]:
                raise ValueError(f"level {lv}: student map {tuple(a_s.shape)} and teacher map "
                                 f"{tuple(a_t.shape)} differ in size")
            fa_s = self.adapt[lv](a_s)
            m_sp = 0.5 * (spatial_mask(a_t, self.tau) + spatial_mask(a_s, self.tau))
            m_ch = None
            if self.use_channel_mask:
                s_src = a_s if self.same_channels[lv] else fa_s
                m_ch = 0.5 * (channel_mask(a_t, self.tau) + channel_mask(s_src, self.tau))
                m_ch = m_ch.detach()
            m_sp = m_sp.detach() if am_mask is None else m_sp.detach() * am_mask[lv]
            out["am"][lv] = attention_masked_loss(a_t, fa_s, m_sp, m_ch)
            out["at_ch"][lv], out["at_sp"][lv] = attention_transfer_losses(
                a_t, a_s, self.channel_adapt[lv], self.spatial_adapt[lv])
            if self.use_nonlocal:
                nl_s = self.nl_adapt[lv](self.nl_s[lv](a_s))
                out["nl"][lv] = per_image_l2(self.nl_t[lv](a_t) - nl_s)
        return out


def weighted_kd(terms: Mapping[str, Mapping[str, Tensor]], weights: Mapping[str, float],
                instance_weights: Tensor | None = None,
                levels: Sequence[str] | None = None) -> Tensor:
    """Per image sum_l w_{b,l} sum_term lambda_term L_{term,b,l} -> (B,).

    ``instance_weights`` is None (all 1), (B,) (one per image) or (B, L) over ``levels``
    (default: the order of the first term's levels). Terms missing from ``weights`` or with
    weight 0 are skipped. The batch loss is the mean of the result (AID's per-image form).
    """
    first = next(iter(terms.values()))
    levels = list(levels or first)
    total = None
    for i, lv in enumerate(levels):
        per_level = sum(float(weights[t]) * terms[t][lv] for t in terms
                        if float(weights.get(t, 0.0)) != 0.0)
        if isinstance(per_level, (int, float)):
            continue
        if instance_weights is not None:
            w = instance_weights if instance_weights.dim() == 1 else instance_weights[:, i]
            per_level = per_level * w
        total = per_level if total is None else total + per_level
    if total is None:
        return torch.zeros(first[levels[0]].shape[0], device=first[levels[0]].device)
    return total


__all__ = ["FeatureDistillHead", "NonLocalBlock", "TERMS", "ZHANG_MA_DEFAULTS",
           "attention_masked_loss", "attention_masks", "attention_transfer_losses",
           "channel_attention", "channel_mask", "per_image_l2", "safe_sqrt", "spatial_attention",
           "spatial_mask", "weighted_kd"]
