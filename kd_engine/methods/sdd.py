"""SDD (ICCV 2023, "selective diffusion distillation"): train a feed-forward editor with score
distillation from a frozen diffusion model, at a timestep chosen by a gradient-entropy indicator.

Editing by noising an image and denoising it trades fidelity (little noise) against editability
(much noise). SDD instead trains an editor E: x' = E(x, c) and lets the frozen class-conditional
denoiser judge x' at one noise level t: with x'_t = √ᾱ_t x' + √(1−ᾱ_t) ε,

    g = w(t)·(ε̂(x'_t, t, c) − ε),   ε̂ = ε_u + s(ε_c − ε_u),   w(t) = 1 − ᾱ_t,

is pushed into x' (the denoiser is not differentiated): the loss is the surrogate Σ sg(g) ⊙ x'
plus λ‖x' − x‖² to keep the source's content. Which t? For each t on a grid the indicator
averages the entropy H(t) of q = softmax over pixels of |g_t| across training images (at the
start, where the editor is the identity); a low entropy means a spatially focused gradient.
``timestep``: ``random`` (t ~ U[t_min, t_max] per sample, the usual SDS default),
``argmin_entropy`` (the paper's choice t*), ``argmax_entropy`` (the opposite control) or
``fixed`` (``t``; an oracle sweep runs several). The denoiser (`kd_engine.parts.ddpm`) is trained
once on the training split's images of every class and cached; it is this method's teacher.
Recorded per instance: ``timestep``, ``entropy`` (of this sample's g), ``sds_grad_norm``,
``identity`` (‖x' − x‖², before λ) and ``loss`` (the surrogate total; its value has no meaning,
only its gradient). The indicator curve and t* go into the run's metadata.
"""
from __future__ import annotations

from typing import Literal

from annotated_types import Ge, Gt, Interval
import torch

from kd_engine.data import build_data
from kd_engine.data.loader import require_in_memory
from kd_engine.errors import ConfigError
from kd_engine.methods.base import Distiller, StepOutput
from kd_engine.methods.registry import GENERATION_METHODS, METHODS
from kd_engine.params import Param, read_params
from kd_engine.parts.ddpm import (alpha_bar, cached_ddpm, gradient_entropy, q_sample, sds_gradient,
                                  sds_surrogate, to_model)

POLICIES = ("random", "fixed", "argmin_entropy", "argmax_entropy")
DEFAULTS = {"timestep": Param("argmin_entropy", kind=Literal[POLICIES]), "t": Param(100, Ge(0)),
            "t_min": Param(4, Ge(0)), "t_max": Param(196, Ge(0)), "guidance": Param(10.0, Ge(0)),
            "lam": Param(1.0, Ge(0)), "grid": Param([10, 30, 50, 70, 90, 110, 130, 150, 170, 190], kind=list[int]),
            "indicator_samples": Param(100, Ge(1)), "ddpm_steps": Param(200, Ge(2)),
            "ddpm_hidden": Param(256, Ge(1)), "ddpm_train_steps": Param(3000, Ge(1)),
            "ddpm_lr": Param(2e-3, Gt(0)), "ddpm_p_uncond": Param(0.1, Interval(ge=0, lt=1))}


@torch.no_grad()
def entropy_indicator(denoiser, x: torch.Tensor, target: torch.Tensor, grid: list[int], abar: torch.Tensor,
                      guidance: float, generator: torch.Generator) -> list[float]:
    """H(t) for each t of ``grid``: the mean over images (B, D in model space) of the entropy of
    softmax(|g_t|) over pixels, one noise draw per image and t."""
    out = []
    for t_value in grid:
        t = torch.full((len(x),), t_value, dtype=torch.long)
        eps = torch.randn(x.shape, generator=generator)
        g = sds_gradient(denoiser.guided(q_sample(x, t, eps, abar), t, target, guidance), eps, t, abar)
        out.append(float(gradient_entropy(g).mean()))
    return out


@GENERATION_METHODS.register("sdd")
@METHODS.register("sdd")
class SDD(Distiller):
    needs_teacher = False
    single_process = True  # the generation task shards no batches across processes

    def __init__(self, cfg, student, teacher, input_shape):
        if teacher is not None:
            raise ConfigError("teacher: method 'sdd' trains its own diffusion teacher; remove the teacher section")
        p = self.p = read_params(cfg.distill.params, DEFAULTS, "distill.params", "method sdd")
        steps = p["ddpm_steps"]
        timesteps = {"t": p["t"], "t_min": p["t_min"], "t_max": p["t_max"],
                     **{f"grid.{i}": v for i, v in enumerate(p["grid"])}}
        for key, value in timesteps.items():
            if not 0 <= value < steps:
                raise ConfigError(f"distill.params.{key}: a timestep in [0, {steps - 1}], got {value}")
        if p["t_min"] > p["t_max"] or not p["grid"]:
            raise ConfigError(f"distill.params: need t_min ≤ t_max and a non-empty grid, got "
                              f"t_min {p['t_min']}, t_max {p['t_max']}, grid {p['grid']}")
        data = build_data(cfg.data, cfg.seed)
        if "prior" not in data.meta:
            raise ConfigError(f"data.name: method 'sdd' edits images of a generation dataset such as "
                              f"digits_edit, got {cfg.data.name!r}")
        prior = data.meta["prior"]
        split_seed = cfg.data.split_seed if cfg.data.split_seed is not None else cfg.seed
        settings = {k[5:]: p[k] for k in p if k.startswith("ddpm_")}
        denoiser, self.teacher_source = cached_ddpm(to_model(prior["x"]), prior["y"], prior["ids"],
                                                    data.num_classes, split_seed, cfg.cache_dir, **settings)
        super().__init__(student, denoiser)
        self.register_buffer("abar", alpha_bar(steps), persistent=False)
        require_in_memory(data.train, "method 'sdd'")
        sample = data.train.x[: p["indicator_samples"]]
        target = torch.full((len(sample),), int(data.meta["target_class"]), dtype=torch.long)
        generator = torch.Generator().manual_seed(int(cfg.seed))
        self.entropy = entropy_indicator(denoiser, to_model(sample), target, p["grid"], self.abar, p["guidance"],
                                         generator)
        order = sorted(range(len(p["grid"])), key=lambda i: self.entropy[i])
        self.t_star = p["grid"][order[0]]
        self.t_used = {"fixed": p["t"], "argmin_entropy": self.t_star,
                       "argmax_entropy": p["grid"][order[-1]], "random": None}[p["timestep"]]

    def describe(self) -> dict:
        """The indicator and the timestep policy, for the run's metadata."""
        return {"timestep_policy": self.p["timestep"], "timestep_used": self.t_used, "t_star": self.t_star,
                "indicator_t": list(self.p["grid"]), "indicator_entropy": self.entropy,
                "guidance": self.p["guidance"], "lam": self.p["lam"], "diffusion_teacher": self.teacher_source}

    def timesteps(self, n: int, device) -> torch.Tensor:
        if self.t_used is None:
            return torch.randint(self.p["t_min"], self.p["t_max"] + 1, (n,), device=device)
        return torch.full((n,), self.t_used, dtype=torch.long, device=device)

    def forward(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> StepOutput:
        edited = self.student(x, target)
        z = to_model(edited)
        t = self.timesteps(len(x), x.device)
        eps = torch.randn_like(z)
        with torch.no_grad():
            eps_hat = self.teacher.guided(q_sample(z.detach(), t, eps, self.abar), t, target, self.p["guidance"])
            grad = sds_gradient(eps_hat, eps, t, self.abar)
        sds = sds_surrogate(z, grad)
        identity = (edited - x).flatten(1).pow(2).sum(1)
        losses = {"sds": sds.mean(), "identity": self.p["lam"] * identity.mean()}
        per_sample = {"timestep": t.float(), "entropy": gradient_entropy(grad), "sds_grad_norm": grad.norm(dim=1),
                      "identity": identity.detach(), "loss": (sds + self.p["lam"] * identity).detach()}
        return StepOutput(edited, losses, per_sample)
