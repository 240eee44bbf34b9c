"""Opt-in looks inside a run that the trainer records besides losses: per-loss gradient norms and
the per-epoch teacher/student feature disparities with their attention and feature maps."""
from __future__ import annotations

import torch

from kd_engine.trainers.evaluate import disparity_rows, layer_outputs, spatial_attention


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
                    attention_maps: int, autocast) -> list:
    """Log the disparity of each (student, teacher) layer pair on the probe inputs ``x`` and save
    the first ``attention_maps`` images' attention and feature maps. A tap whose hook never fired
    (the layer is not on the forward path) is reported once as an event and its pairs dropped;
    returns the pairs still recorded."""
    s_feats = layer_outputs(student, x, sorted({p.student for p in pairs}), autocast)
    t_feats = layer_outputs(teacher, x, sorted({p.teacher for p in pairs}), autocast)
    silent = sorted({f"student {p.student}" for p in pairs if p.student not in s_feats}
                    | {f"teacher {p.teacher}" for p in pairs if p.teacher not in t_feats})
    if silent:
        writer.event(f"epoch {epoch}: feature taps fired no hook: {', '.join(silent)}", level="warning")
        pairs = [p for p in pairs if p.student in s_feats and p.teacher in t_feats]
        if not pairs:
            return pairs
    writer.log_features(epoch, disparity_rows(s_feats, t_feats, pairs))
    shown = min(len(probe_ids), attention_maps)
    ids = probe_ids[:shown]
    for role, feats in (("student", s_feats), ("teacher", t_feats)):
        for layer, value in feats.items():
            if value.dim() != 4 or not shown:
                continue
            meta = {"instance_ids": ids, "layer": layer}
            writer.save_artifact(f"attention/e{epoch}/{role}/{layer}", spatial_attention(value[:shown]).numpy(),
                                 kind="attention_map", epoch=epoch, role=role, meta=meta)
            writer.save_artifact(f"feature/e{epoch}/{role}/{layer}", value[:shown].numpy(),
                                 kind="feature_map", epoch=epoch, role=role, meta=meta)
    return pairs
