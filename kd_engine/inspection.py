"""Look inside a recorded run's models: rebuild teacher and student from their checkpoints and
compute attribution maps (Grad-CAM, Saliency, Integrated Gradients, ViT attention) on demand.

The dashboard's Attention page and the notebooks use this module, so neither needs the trainer's
internals. It never imports streamlit; callers cache what it returns.
"""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kd_engine.errors import CheckpointError, DataError, KDWError
from kd_engine.store import Run

__all__ = ["RunInspector", "METHODS", "unavailable_reason", "forward_flops", "attribution", "grad_cam", "saliency", "integrated_gradients",
           "vit_attention", "spatial_layers", "resize_map", "normalise_map", "agreement"]

METHODS = ("gradcam", "saliency", "integrated_gradients", "vit_attention", "vit_rollout")


class RunInspector:
    """The models and inputs of one run, built lazily and kept (cheap to keep: small CPU models)."""

    def __init__(self, run_dir: str | Path):
        self.run = Run(run_dir)
        meta = self.run.meta()
        self.input_shape = tuple(int(s) for s in meta.get("input_shape") or ())
        self.class_names = [str(c) for c in meta.get("class_names") or []]
        if not self.input_shape or not self.class_names:
            raise DataError(f"{self.run.run_id}: run metadata lacks input_shape/class_names")
        self._models: dict[str, nn.Module] = {}
        self._inputs: dict[int, torch.Tensor] | None = None

    def has_model(self, which: str) -> bool:
        return self.run.checkpoint_path(which) is not None

    def model(self, which: str = "student") -> nn.Module:
        """The role's model in eval mode; CheckpointError when the run has no such checkpoint."""
        if which not in self._models:
            self._models[which] = self._build(which)
        return self._models[which]

    def unavailable(self, which: str) -> str | None:
        """Why the role's model cannot be rebuilt (a `kd_engine.distill` run of a module no spec
        rebuilds), else None."""
        return unavailable_reason(self.run, which)

    def _build(self, which: str) -> nn.Module:
        from kd_engine.models import build_model
        from kd_engine.trainers.checkpoint import load_weights, read_metadata

        reason = self.unavailable(which)
        if reason:
            raise CheckpointError(f"{self.run.run_id}: {reason}")
        path = self.run.checkpoint_path(which)
        if path is None:
            raise CheckpointError(f"{self.run.run_id}: no {which} checkpoint (yet)")
        try:
            info = read_metadata(path)
        except Exception as exc:  # a damaged or half-written file
            raise CheckpointError(f"{path}: unreadable checkpoint ({exc})") from None
        if not info.get("model"):
            section = self.run.config().get(which) or {}
            info = {"model": section.get("name"), "params": section.get("params") or {}}
        spec = SimpleNamespace(name=info.get("model"), params=dict(info.get("params") or {}))
        model = build_model(spec, self.input_shape, len(self.class_names), field=which)
        load_weights(model, path, field=f"{which} checkpoint")
        return model.eval()

    def inputs(self, instance_ids: Sequence[int]) -> torch.Tensor:
        """Model inputs of the given instances, rebuilt from the run's data config (the image bank
        stands in when the data cannot be rebuilt here)."""
        table = self._input_table()
        missing = [int(i) for i in instance_ids if int(i) not in table]
        if missing:
            raise DataError(f"{self.run.run_id}: instance {missing[0]} is not in this run's data")
        return torch.stack([table[int(i)] for i in instance_ids])

    def _input_table(self) -> dict[int, torch.Tensor]:
        if self._inputs is None:
            try:
                self._inputs = self._rebuild_inputs()
            except (KDWError, OSError, ValueError, TypeError, AttributeError):
                self._inputs = self._bank_inputs()
        return self._inputs

    def _rebuild_inputs(self) -> dict[int, torch.Tensor]:
        from kd_engine.config import validate
        from kd_engine.data import build_data

        cfg = validate(self.run.config(), f"{self.run.run_id} config")
        bundle = build_data(cfg.data, cfg.seed)
        table: dict[int, torch.Tensor] = {}
        for split in (bundle.train, bundle.val, bundle.test):
            xs, ids = getattr(split, "x", None), getattr(split, "ids", None)
            if xs is None or ids is None:
                raise DataError("data is not in memory")
            table.update(zip((int(i) for i in ids.tolist()), xs))
        return table

    def _bank_inputs(self) -> dict[int, torch.Tensor]:
        bank = self.run.images(self.run.load_artifact("instance_image_ids").tolist())
        out = {}
        for iid, img in bank.items():
            arr = np.asarray(img, dtype=np.float32)
            if arr.ndim == 3 and arr.shape[-1] in (1, 3):
                arr = np.moveaxis(arr, -1, 0)
            out[iid] = torch.from_numpy(arr.reshape(self.input_shape).copy())
        return out

    def predict(self, which: str, instance_ids: Sequence[int]) -> np.ndarray:
        with torch.no_grad():
            return self.model(which)(self.inputs(instance_ids)).argmax(1).numpy()

    def latency_ms(self, which: str = "student", batch: int = 64, repeats: int = 7) -> float:
        """Median CPU milliseconds per instance of a forward pass (batch `batch`, no grad)."""
        model = self.model(which)
        x = torch.rand(batch, *self.input_shape)
        times = []
        with torch.no_grad():
            model(x)  # warm-up
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
        return 1000.0 * float(np.median(times)) / batch

    def flops(self, which: str = "student") -> int:
        """Forward FLOPs of the role's model for one instance (see `forward_flops`)."""
        return forward_flops(self.model(which), self.input_shape)

    def attribution(self, which: str, method: str, instance_ids: Sequence[int],
                    targets: Sequence[int], layer: str | None = None) -> np.ndarray:
        """(N, H, W) float32 maps of `method` for the role's model, at input resolution."""
        return attribution(self.model(which), self.inputs(instance_ids), method,
                           torch.as_tensor(list(targets), dtype=torch.long), layer)


def unavailable_reason(run: Run, which: str) -> str | None:
    """Why ``run``'s ``which`` model cannot be rebuilt from its config, or None when it can: the
    Python API records the reason for a module that no registry spec or import target rebuilds."""
    return (run.meta().get("not_rebuildable") or {}).get(which)


def forward_flops(model: nn.Module, input_shape: Sequence[int], batch: int = 1) -> int:
    """FLOPs of one forward pass per instance, counted by `torch.utils.flop_counter.FlopCounterMode`
    on a zero input of `batch` instances of shape `input_shape` (without the batch dimension).

    A multiply-add counts as 2 FLOPs (an nn.Linear(i, o) costs 2*i*o per instance); only the
    operators FlopCounterMode knows are counted (matmuls, convolutions, attention), not
    elementwise ones (bias, activations, normalisation), as in the usual reported model FLOPs.
    The model runs in eval mode under no_grad and is put back in its previous mode.
    """
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters(), None)
    x = torch.zeros(batch, *(int(s) for s in input_shape),
                    dtype=param.dtype if param is not None and param.is_floating_point() else torch.float32,
                    device=param.device if param is not None else "cpu")
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(training)
    return int(counter.get_total_flops()) // batch


def spatial_layers(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """Feature layers whose output is a (C, H, W) map: the ones Grad-CAM can use."""
    from kd_engine.models import layer_shapes

    names = list(getattr(model, "feature_layers", []) or [])
    if not names:
        return []
    shapes = layer_shapes(model, input_shape, names)
    return [n for n in names if len(shapes[n]) == 3]


def grad_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str) -> np.ndarray:
    from captum.attr import LayerAttribution, LayerGradCam

    module = dict(model.named_modules()).get(layer)
    if module is None:
        raise KDWError(f"unknown layer {layer!r} for {type(model).__name__}")
    attr = LayerGradCam(model, module).attribute(x, target=target, relu_attributions=True)
    attr = LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return attr.detach().sum(1).numpy().astype(np.float32)


def saliency(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    from captum.attr import Saliency

    attr = Saliency(model).attribute(x.clone().requires_grad_(True), target=target, abs=True)
    return attr.detach().sum(1).numpy().astype(np.float32)


def integrated_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                         steps: int = 32) -> np.ndarray:
    from captum.attr import IntegratedGradients

    attr = IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=target,
                                                n_steps=steps)
    return attr.detach().abs().sum(1).numpy().astype(np.float32)


def vit_attention(model: nn.Module, x: torch.Tensor, rollout: bool = True) -> np.ndarray:
    """The [cls] token's attention over patches: the last layer's (raw) or rolled out over all
    layers (Abnar & Zuidema: average heads, add the residual identity, renormalise, multiply)."""
    from kd_engine.models import feature_taps

    names = list(getattr(model, "attention_layers", []) or [])
    if not names:
        raise KDWError(f"{type(model).__name__} has no attention layers (not a ViT)")
    with torch.no_grad(), feature_taps(model, names) as taps:
        model(x)
    probs = [taps[n].mean(1) for n in names]  # (B, T, T) per layer, heads averaged
    if rollout:
        eye = torch.eye(probs[0].shape[-1])
        joint = eye.expand_as(probs[0])
        for a in probs:
            a = 0.5 * a + 0.5 * eye
            joint = (a / a.sum(-1, keepdim=True)) @ joint
        cls = joint[:, 0, 1:]
    else:
        cls = probs[-1][:, 0, 1:]
    side = int(round(cls.shape[-1] ** 0.5))
    grid = cls.reshape(-1, 1, side, cls.shape[-1] // side)
    return F.interpolate(grid, size=tuple(x.shape[-2:]), mode="nearest")[:, 0].numpy().astype(np.float32)


def attribution(model: nn.Module, x: torch.Tensor, method: str, target: torch.Tensor,
                layer: str | None = None) -> np.ndarray:
    if method == "gradcam":
        if layer is None:
            raise KDWError("gradcam needs a layer")
        return grad_cam(model, x, target, layer)
    if method == "saliency":
        return saliency(model, x, target)
    if method == "integrated_gradients":
        return integrated_gradients(model, x, target)
    if method in ("vit_attention", "vit_rollout"):
        return vit_attention(model, x, rollout=method == "vit_rollout")
    raise KDWError(f"unknown attribution method {method!r} (allowed: {', '.join(METHODS)})")


def resize_map(a: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Bilinear resize of a 2-D map (recorded maps of different layers differ in size)."""
    a = np.asarray(a, dtype=np.float32)
    if tuple(a.shape) == tuple(shape):
        return a
    t = torch.from_numpy(a)[None, None]
    return F.interpolate(t, size=tuple(int(s) for s in shape), mode="bilinear",
                         align_corners=False)[0, 0].numpy()


def normalise_map(a: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1], so maps of different models are drawn and differenced on one scale."""
    a = np.asarray(a, dtype=np.float32)
    span = float(a.max() - a.min()) if a.size else 0.0
    return (a - a.min()) / span if span > 0 else np.zeros_like(a)


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Pearson correlation and cosine similarity of two maps (b resized to a's shape)."""
    a = np.asarray(a, dtype=np.float64)
    b = resize_map(b, a.shape).astype(np.float64)
    fa, fb = a.ravel(), b.ravel()
    da, db = fa - fa.mean(), fb - fb.mean()
    denom = np.linalg.norm(da) * np.linalg.norm(db)
    cos_denom = np.linalg.norm(fa) * np.linalg.norm(fb)
    return {"pearson": float(da @ db / denom) if denom > 0 else float("nan"),
            "cosine": float(fa @ fb / cos_denom) if cos_denom > 0 else float("nan")}


def describe(inspector: RunInspector, which: str) -> dict[str, Any]:
    """Name, parameter count and Grad-CAM layers of a role's model (for pickers and captions)."""
    from kd_engine.models import count_parameters

    model = inspector.model(which)
    return {"model": type(model).__name__, "params": count_parameters(model),
            "layers": spatial_layers(model, inspector.input_shape),
            "is_vit": bool(getattr(model, "attention_layers", None))}
