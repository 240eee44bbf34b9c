"""Opt-in looks inside a run that the trainer records besides losses: per-loss gradient norms and
the per-epoch teacher/student feature disparities with their attention and feature maps."""
from __future__ import annotations

import torch

import time

from kd_engine.trainers.evaluate import RecorderGuard, bytes_per_probe_sample, disparity_rows, layer_outputs, spatial_attention
from kd_engine.trainers.instance_disparity import record_instance_disparity


def grad_norms(losses: dict[str, torch.Tensor], params: list[torch.nn.Parameter]) -> dict[str, float]:
    """grad_norm/<loss>: the L2 norm of each named loss's gradient with respect to ``params``,
    from `torch.autograd.grad` on the retained graph (no ``.grad`` is touched, so an optimizer
    step that follows sees exactly the gradients it would have seen)."""
    norms = {}
    for name, value in losses.items():
        if not value.requires_grad or not params:
            norms[f"grad_norm/{name}"] = 0.0
            continue
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        squares = [g.detach().float().pow(2).sum() for g in grads if g is not None]
        norms[f"grad_norm/{name}"] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    return norms


def record_features(writer, student, teacher, pairs, x, probe_ids: list[int], epoch: int,
                    attention_maps: int, autocast, split: str = "val",
                    guard: RecorderGuard | None = None) -> list:
    """Log the disparity of each (student, teacher) layer pair on the probe inputs ``x`` and save
    the first ``attention_maps`` images' attention and feature maps. A tap whose hook never fired
    (the layer is not on the forward path) is reported once as an event and its pairs dropped;
    returns the pairs still recorded."""
    s_layers, t_layers = sorted({p.student for p in pairs}), sorted({p.teacher for p in pairs})
    deadline = float("inf")
    if guard is not None:  # cut the probe to the memory budget; stop the maps at the time budget
        per_sample = (bytes_per_probe_sample(student, s_layers, x, autocast)
                      + bytes_per_probe_sample(teacher, t_layers, x, autocast))
        count = guard.fit_count("features", len(x), per_sample)
        if count < 2:  # CKA needs two samples; the guard turns this into one warning
            raise MemoryError(f"one probe sample's features take {per_sample / 2**20:.1f} MB, "
                              f"over the {guard.megabytes:g} MB budget")
        x, probe_ids = x[:count], probe_ids[:count]
        deadline = guard.deadline()
    s_feats = layer_outputs(student, x, s_layers, autocast)
    t_feats = layer_outputs(teacher, x, t_layers, autocast)
    silent = sorted({f"student {p.student}" for p in pairs if p.student not in s_feats}
                    | {f"teacher {p.teacher}" for p in pairs if p.teacher not in t_feats})
    if silent:
        writer.event(f"epoch {epoch}: feature taps fired no hook: {', '.join(silent)}", level="warning")
        pairs = [p for p in pairs if p.student in s_feats and p.teacher in t_feats]
        if not pairs:
            return pairs
    writer.log_features(epoch, disparity_rows(s_feats, t_feats, pairs, deadline))
    # per probe instance, for kd_engine.diagnosis.layers (which layer's disparity predicts errors)
    record_instance_disparity(writer, epoch, probe_ids, s_feats, t_feats, pairs, split=split)
    shown = min(len(probe_ids), attention_maps)
    ids = probe_ids[:shown]
    for role, feats in (("student", s_feats), ("teacher", t_feats)):
        for layer, value in feats.items():
            if value.dim() != 4 or not shown or time.perf_counter() > deadline:
                continue
            meta = {"instance_ids": ids, "layer": layer}
            writer.save_artifact(f"attention/e{epoch}/{role}/{layer}", spatial_attention(value[:shown]).numpy(),
                                 kind="attention_map", epoch=epoch, role=role, meta=meta)
            writer.save_artifact(f"feature/e{epoch}/{role}/{layer}", value[:shown].numpy(),
                                 kind="feature_map", epoch=epoch, role=role, meta=meta)
    return pairs
