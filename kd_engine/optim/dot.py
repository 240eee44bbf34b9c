"""DOT, the Distillation-Oriented Trainer (Zhao et al., ICCV 2023): separate momentum buffers for
the task gradient and the distillation gradient, the larger momentum (β + Δ) for distillation.

The trainer gives such an optimizer its two losses through `backward_streams`; the
distillation gradient is *copied* before the task backward pass, so zeroing gradients in place
cannot wipe it (the pitfall of keeping references).
"""
from __future__ import annotations

import torch

from kd_engine.errors import ConfigError
from kd_engine.optim.registry import OPTIMIZERS


class DOT(torch.optim.Optimizer):
    """u ← (β−Δ)·u + (g_task + wd·θ); v ← (β+Δ)·v + g_kd; θ ← θ − lr·u − lr·v. A parameter
    that gets only one of the two gradients uses one buffer with momentum β and weight decay."""

    def __init__(self, params, lr: float, momentum: float = 0.9, delta: float = 0.075,
                 weight_decay: float = 0.0):
        if not (0.0 <= momentum - delta and momentum + delta < 1.0):
            raise ConfigError(f"optimizer.params.delta: momentum ± delta must lie in [0, 1), got "
                              f"{momentum} ± {delta}")
        super().__init__(params, dict(lr=lr, momentum=momentum, delta=delta, weight_decay=weight_decay))
        self._kd_grads: dict[torch.Tensor, torch.Tensor] = {}

    def backward_streams(self, task_loss: torch.Tensor, distill_loss: torch.Tensor | None) -> None:
        """Two backward passes: distillation first (graph kept, gradients copied), then task."""
        self.zero_grad(set_to_none=True)
        self._kd_grads = {}
        if distill_loss is not None and distill_loss.requires_grad:
            distill_loss.backward(retain_graph=True)
            self._kd_grads = {p: p.grad.detach().clone() for group in self.param_groups
                              for p in group["params"] if p.grad is not None}
            self.zero_grad(set_to_none=True)
        task_loss.backward()

    @staticmethod
    def _momentum_update(state: dict, key: str, gradient: torch.Tensor, momentum: float) -> torch.Tensor:
        buffer = state.get(key)
        if buffer is None:  # a buffer starts as the first gradient it receives, as in SGD
            buffer = state[key] = gradient.clone()
        else:
            buffer.mul_(momentum).add_(gradient)
        return buffer

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, beta, delta, wd = group["lr"], group["momentum"], group["delta"], group["weight_decay"]
            for p in group["params"]:
                g_task, g_kd = p.grad, self._kd_grads.get(p)
                if g_task is None and g_kd is None:
                    continue
                state = self.state[p]
                if g_task is not None and g_kd is not None:
                    u = self._momentum_update(state, "task_buffer", g_task.add(p, alpha=wd), beta - delta)
                    v = self._momentum_update(state, "kd_buffer", g_kd, beta + delta)
                    p.add_(u, alpha=-lr)
                    p.add_(v, alpha=-lr)
                else:
                    gradient = (g_task if g_task is not None else g_kd).add(p, alpha=wd)
                    p.add_(self._momentum_update(state, "single_buffer", gradient, beta), alpha=-lr)
        self._kd_grads = {}
        return None


@OPTIMIZERS.register("dot")
def _build_dot(parameters, cfg, delta: float = 0.075) -> DOT:
    return DOT(parameters, lr=cfg.lr, momentum=cfg.momentum, delta=delta, weight_decay=cfg.weight_decay)
