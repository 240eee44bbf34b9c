"""Small digits runs with known faults for the diagnosis tests, each trained by the real engine
(threads 1, 2-3 epochs, a few seconds each), and one store built by hand where the engine refuses
to produce the fault (a feature tap that never fires)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from conftest import digits_raw

EPOCHS = 2


def _train(raw: dict) -> Path:
    from kd_engine.config import validate
    from kd_engine.run import train

    return train(validate(raw), distributed=False)


def shuffled_teacher(source: Path, target: Path, seed: int = 0) -> Path:
    """The cached teacher's checkpoint with every tensor's entries permuted: same shapes, same
    metadata (so the engine accepts it), no knowledge left."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    import torch

    generator = torch.Generator().manual_seed(seed)
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {}
        for key in handle.keys():
            value = handle.get_tensor(key)
            if value.is_floating_point() and value.numel() > 1:
                flat = value.flatten()
                value = flat[torch.randperm(flat.numel(), generator=generator)].view_as(value).contiguous()
            tensors[key] = value
    save_file(tensors, str(target), metadata=metadata)
    return target


def train_fixture_runs(base: Path, teacher_cache) -> SimpleNamespace:
    """clean (teacher_confidence weighting), weight0, shuffled, flat (tiny lr), scratch (control)."""
    runs = base / "runs"

    def raw(name: str, **overrides):
        over = {"epochs": EPOCHS, "name": name, "record.tensorboard": False, **overrides}
        return digits_raw(runs, teacher_cache.cache_dir, over)

    out = SimpleNamespace(runs_dir=runs)
    out.clean = _train(raw("clean", **{"weighting.strategy": "teacher_confidence"}))
    out.weight0 = _train(raw("weight0", **{"distill.terms.0.weight": 0.0}))
    bad = shuffled_teacher(teacher_cache.path, base / "shuffled_teacher.safetensors")
    out.shuffled = _train(raw("shuffled", **{"teacher.checkpoint": str(bad)}))
    out.flat = _train(raw("flat", **{"optimizer.lr": 1e-5}))
    scratch = raw("scratch", method="scratch")
    for key in ("teacher", "distill", "weighting"):
        scratch.pop(key, None)
    out.scratch = _train(scratch)
    return out


def unfired_tap_run(runs_dir: Path, run_id: str = "20260101-000000-untapped-0000", tap_calls: bool = True) -> Path:
    """A feature term on a layer that never runs in forward. The engine refuses such a config
    before training (layer_shapes finds no output), so the store is written by hand, as a trainer
    recording the tap's hook calls would write it: `tap_calls/student/<layer>` = 0 each epoch and
    no features rows for the layer, alongside healthy logit-term scalars. Without `tap_calls` only
    the missing features rows tell (a trainer that does not count hook calls)."""
    from kd_engine.store import RunWriter

    config = {"name": "untapped", "seed": 0, "epochs": 2, "data": {"name": "digits"},
              "teacher": {"name": "resnet", "params": {"width": 16, "depth": 1}},
              "student": {"name": "resnet", "params": {"width": 8, "depth": 1}},
              "distill": {"terms": [{"loss": "kd", "weight": 1.0},
                                    {"loss": "at", "weight": 1.0, "student_layer": "unused_head",
                                     "teacher_layer": "layer2"}]},
              "weighting": {"strategy": "uniform"}}
    meta = {"method": "standard", "dataset": "digits", "class_names": [str(k) for k in range(10)],
            "input_shape": [1, 8, 8], "teacher": "resnet", "student": "resnet"}
    writer = RunWriter.create(runs_dir, "untapped", meta, yaml.safe_dump(config), run_id=run_id, tensorboard=False)
    rng = np.random.default_rng(0)
    step = 0
    for epoch in range(2):
        for _ in range(8):
            loss = 2.0 / (step + 1)
            writer.log_scalars(step, epoch, {"train/loss": loss + 0.1, "train/task": loss, "train/distill": 0.5 * loss,
                                             "train/term/kd": 0.5 * loss, "train/term/at": 0.0})
            step += 1
        writer.log_scalars(step, epoch, {"val/student_acc": 0.6 + 0.2 * epoch, "val/teacher_acc": 0.95})
        if tap_calls:
            writer.log_scalars(step, epoch, {"tap_calls/student/unused_head": 0.0, "tap_calls/teacher/layer2": 8.0})
        writer.log_features(epoch, [("layer1", "layer1", "cka", 0.8)])  # another recorded pair
        labels = rng.integers(0, 10, 100)
        writer.log_instances({"split": np.full(100, "val"), "epoch": np.full(100, epoch), "instance_id": np.arange(100),
                              "label": labels, "teacher_pred": labels, "student_pred": labels})
        writer.flush()
    writer.set_status("finished")
    writer.close()
    return writer.run_dir


@pytest.fixture(scope="session")
def fixture_runs(tmp_path_factory, teacher_cache):
    """The trained fault runs, once per test session (module imported by the diagnosis tests)."""
    return train_fixture_runs(tmp_path_factory.mktemp("diagnosis"), teacher_cache)
