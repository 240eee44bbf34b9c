"""RDD (ICCV 2023): representation disparity-aware distillation for compact 3-D detectors.

When the student is far narrower than its teacher, imitating the teacher's whole BEV feature map
spends the student's little capacity on cells that do not matter (empty ground) or that it
cannot match anyway. RDD distils only on a few region pairs, chosen where student and teacher
disagree most, with foreground and background balanced, at the feature and the logit level,
and passes the student's features through a variational information bottleneck:

    candidates R = the top-N teacher heatmap peaks ∪ the true object centres (3×3 windows)
    d_r = 1 − cos(A(F_S)_r, F_T,r)                   (window blocks, `parts.bev_regions`)
    keep the top-k regions by d_r; M = balanced mask: the kept foreground regions share 0.5 of
    the scene's weight, the kept background regions 0.5 (per scene)
    L = L_det + λ_f·Σ_cells M·mean_c(A(F_S) − F_T)² + λ_l·Σ_cells M·Σ_c BKL(σ(z_T/T) ‖ σ(z_S/T))
        + β·KL(N(μ, σ²) ‖ N(0, I))

Reconstruction (the method's own code is not public): the candidate set, N = 32, k = 16, the
3×3 windows, "foreground" = a window holding a true centre, the 0.5/0.5 balance, the cosine
disparity measured on the adapter's mean μ (detached: selection is not trained through), the
variational 1×1 adapter (`VariationalAdapter`) and β = 1e-3. Teacher peaks come from its
heatmap (max over classes after 3×3 max-pool suppression). Recorded per scene: the numbers of
kept foreground and background regions and the mean disparity of the kept regions and of all
candidates; `selection` (through `region_view`) gives the kept regions themselves for the dashboard.
"""
from __future__ import annotations

import torch
from annotated_types import Ge, Interval

from kd_engine.bev_metrics import heatmap_peaks
from kd_engine.losses.bev import gaussian_kl
from kd_engine.methods.bev_base import BEV_METHODS, BEVDistiller
from kd_engine.methods.registry import METHODS
from kd_engine.params import Param
from kd_engine.parts.bev_regions import VariationalAdapter, balanced_mask, disparity_map, near, select_regions


@METHODS.register("rdd")
@BEV_METHODS.register("rdd")
class RDD(BEVDistiller):
    defaults = {**BEVDistiller.defaults, "peaks": Param(32, Ge(0)), "top_k": Param(16, Ge(1)),
                "window": Param(3, Ge(1)), "fg_share": Param(0.5, Interval(ge=0, le=1)),
                "ib_weight": Param(1e-3, Ge(0))}

    def build_adapter(self, s_channels: int, t_channels: int):
        return VariationalAdapter(s_channels, t_channels)

    def adapt(self, feature):
        sample, mu, logvar = self.adapter(feature)
        return sample, {"mu": mu, "logvar": logvar}

    def extra_terms(self, adapter_out):
        return {"ib": self.p["ib_weight"] * gaussian_kl(adapter_out["mu"], adapter_out["logvar"], reduction="none")}

    @torch.no_grad()
    def selection(self, t_logits, adapter_out, t_feat, reg_mask) -> dict[str, torch.Tensor]:
        """The kept regions of a batch: ``index`` (B, k) flat cells, ``valid`` and ``foreground``
        (B, k) bool, ``disparity`` (B, k), the candidates (B, h, w) bool and the disparity map."""
        window = self.p["window"]
        d_map = disparity_map(adapter_out["mu"], t_feat, window)
        peaks = heatmap_peaks(torch.sigmoid(t_logits.float())).amax(1).flatten(1)
        candidates = reg_mask.flatten(1) > 0
        if self.p["peaks"]:
            top = peaks.topk(min(self.p["peaks"], peaks.shape[1]), dim=1).indices
            candidates = candidates.scatter(1, top, True)
        candidates = candidates.view_as(d_map)
        index, valid = select_regions(d_map, candidates, self.p["top_k"])
        foreground = near(reg_mask, window).flatten(1).gather(1, index)
        return {"index": index, "valid": valid, "foreground": foreground,
                "disparity": d_map.flatten(1).gather(1, index), "candidates": candidates, "map": d_map}

    def masks(self, s_logits, t_logits, adapter_out, t_feat, heatmap, reg_mask):
        chosen = self.selection(t_logits, adapter_out, t_feat, reg_mask)
        mask = balanced_mask(chosen["index"], chosen["valid"], chosen["foreground"], tuple(reg_mask.shape[1:]),
                             self.p["fg_share"], self.p["window"])
        valid = chosen["valid"].float()
        kept_fg = (chosen["valid"] & chosen["foreground"]).float().sum(1)
        d_cand = (chosen["map"] * chosen["candidates"]).flatten(1).sum(1) / chosen["candidates"].flatten(1).sum(1).clamp(min=1)
        decisions = {"selected_fg": kept_fg, "selected_bg": valid.sum(1) - kept_fg,
                     "disparity_selected": (chosen["disparity"] * valid).sum(1) / valid.sum(1).clamp(min=1),
                     "disparity_candidates": d_cand}
        return mask, mask, decisions
