"""The Python API: distil your own ``nn.Module`` teacher into your own student, on your own data,
from a notebook or a script, recording into the same run store as ``kdw train``::

    import kd_engine
    run = kd_engine.distill(teacher, student, train_set, val_set, terms=["kd"], epochs=5)
    print(run.final_metrics())

    trainer = kd_engine.make_trainer(teacher, student, train_set, epochs=5)
    trainer.fit(steps=10)   # ten optimisation steps; the next call continues from there
    trainer.fit(epochs=1)   # to the end of the current epoch (validation, checkpoint)

Nothing here is a second training loop: the arguments become an `ExperimentConfig` (the run's
``config.yaml``), the data a `DataBundle` for the classification task, and the models a method
(``method="standard"`` by default) stepped by the one `kd_engine.trainer.Trainer`. So ``kdw runs``
lists the run and the dashboard shows it like any other.

Data: a map-style ``Dataset`` or a ``DataLoader`` whose items are ``(x, y)`` or ``(x, y, id)``
with ``x`` a tensor. Without ids, the id of an item is its dataset index (validation items
continue after the training ones and test items after those, so no two splits share an id). The loader's batch size is
used unless ``batch_size`` is given; its sampler and workers are not (the trainer draws its own
seeded order, which exact resume and the per-instance records rely on).

Models: the run config names each model by a registry spec so views that rebuild it (the
Attention page's on-demand attributions, ``load_student``) can. The spec is the one given
(``teacher_spec``/``student_spec``, e.g. ``{"name": "import", "params": {"target":
"my_pkg.models:small_net"}}``), else one found for a torchvision or timm model, or a class importable
with no arguments, and kept only when the spec rebuilds a model with the same parameter names and
shapes. A model without one is recorded as ``python`` (not rebuildable); the run then records its
probe instances' attention maps every epoch (feature pairs at the last spatial layers) and the
Attention page says why on-demand attributions are unavailable.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kd_engine.errors import ConfigError, DataError

__all__ = ["distill", "make_trainer", "model_spec", "instance_dataset"]

PYTHON_DATA = "python"  # data.name of an API run: its data lives in the session that made it
PYTHON_MODEL = "python"  # model name of a module no spec rebuilds (kd_engine.models.external)


def _python_data(data_cfg, seed):
    raise DataError(f"data.name: {PYTHON_DATA!r} marks a run made by kd_engine.distill; its data lived in the "
                    "Python session that made it and cannot be rebuilt from the config")


def _python_model(input_shape, num_classes, **params):
    raise ValueError(f"{params.get('class', 'the model')} was built in Python by a kd_engine.distill run and "
                     "has no registry spec or import target to rebuild it from")


def _register() -> None:
    """The names an API run's config uses for what only its Python session had: known to the
    registries, so a config check passes and a rebuild fails with the reason."""
    from kd_engine.data.registry import DATASETS
    from kd_engine.models.registry import MODELS

    if PYTHON_DATA not in DATASETS:
        DATASETS.register(PYTHON_DATA)(_python_data)
    if PYTHON_MODEL not in MODELS:
        MODELS.register(PYTHON_MODEL)(_python_model)


_register()


# -- data --------------------------------------------------------------------------------------
def _items(data) -> tuple[Iterable, Any]:
    """The items of a dataset or a loader's dataset (map-style), or a loader's batches."""
    if isinstance(data, DataLoader):
        if hasattr(data.dataset, "__getitem__") and hasattr(data.dataset, "__len__"):
            return (data.dataset[i] for i in range(len(data.dataset))), data.dataset
        return ((x, y, *rest) for batch in data for x, y, *rest in zip(*batch)), data.dataset
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        return (data[i] for i in range(len(data))), data
    raise DataError(f"data: expected a torch Dataset or DataLoader, got {type(data).__name__}")


def _source_names(dataset, count: int, first_id: int) -> list[str]:
    """Where each item came from: its file for an ImageFolder-like dataset (``samples``), else
    ``<class>[index]``."""
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, (list, tuple)) and len(samples) == count:
        return [str(path) for path, *_ in samples]
    return [f"{type(dataset).__name__}[{i}]" for i in range(count)]


MEMORY_LIMIT = 50_000_000  # floats: a split up to this size (200 MB) is held in memory, a larger one streamed


def instance_dataset(data, first_id: int = 0, split: str = "train"):
    """A user's dataset or loader as the classification task's split: the one place that decides
    how user data is held. A split of up to `MEMORY_LIMIT` floats is read once into an in-memory
    `TensorInstanceDataset` (the fastest path); a larger map-style one is wrapped by the data
    layer's ``stream_dataset`` and read through a DataLoader every epoch (ids from the index)."""
    items, dataset = _items(data)
    stream = _streamer()
    if stream is not None and hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__") and len(dataset):
        x = dataset[0][0]
        if isinstance(x, torch.Tensor) and len(dataset) * x.numel() > MEMORY_LIMIT:
            return stream(dataset, ids=np.arange(first_id, first_id + len(dataset)), name=split)
    return _materialise(items, dataset, first_id, split)


def _streamer():
    """The data layer's lazy wrapper for a user's dataset, where this build has it."""
    try:
        from kd_engine.data.loader import stream_dataset
    except ImportError:  # a build without the streaming path holds every split in memory
        return None
    return stream_dataset


def _materialise(items, dataset, first_id: int, split: str):
    from kd_engine.data.base import TensorInstanceDataset

    xs, ys, ids = [], [], []
    for index, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise DataError(f"{split} data: item {index} must be (x, y) or (x, y, id), "
                            f"got {type(item).__name__}")
        x, y = item[0], item[1]
        if not isinstance(x, torch.Tensor):
            raise DataError(f"{split} data: item {index}: x is a {type(x).__name__}, not a tensor "
                            "(give the dataset a transform such as torchvision's ToTensor)")
        xs.append(x.detach().float().cpu())
        ys.append(int(y))
        ids.append(int(item[2]) if len(item) == 3 else first_id + index)
    if not xs:
        raise DataError(f"{split} data: the dataset is empty")
    if len({tuple(x.shape) for x in xs}) != 1:
        raise DataError(f"{split} data: items differ in shape ({xs[0].shape} vs others); resize them "
                        "to one size in the dataset's transform")
    if len(set(ids)) != len(ids):
        raise DataError(f"{split} data: instance ids repeat (ids must be unique)")
    out = TensorInstanceDataset(torch.stack(xs), torch.tensor(ys), torch.tensor(ids))
    out.source_names = _source_names(dataset, len(ids), first_id)
    return out


def _input_shape(split) -> tuple[int, ...]:
    return tuple(split.x.shape[1:]) if hasattr(split, "x") else tuple(split.eval_item(0)[0].shape)


def _empty(shape):
    from kd_engine.data.base import TensorInstanceDataset

    return TensorInstanceDataset(torch.zeros((0, *shape)), torch.zeros(0, dtype=torch.long),
                                 torch.zeros(0, dtype=torch.long))


def _bundle(train_data, val_data, test_data, num_classes: int | None, class_names: Sequence[str] | None):
    from kd_engine.data.base import DataBundle

    train = instance_dataset(train_data, 0, "train")
    shape = _input_shape(train)
    splits = {"train": train}
    for name, given in (("val", val_data), ("test", test_data)):
        if given is None:
            splits[name] = _empty(shape)
            continue
        first = max(int(s.ids.max()) for s in splits.values() if len(s)) + 1  # after the ids so far
        splits[name] = instance_dataset(given, first, name)
        seen = set().union(*(s.ids.tolist() for k, s in splits.items() if k != name))
        if seen & set(splits[name].ids.tolist()):
            raise DataError(f"{name} data: its ids overlap those of another split (each instance needs its own id)")
    val, test = splits["val"], splits["test"]
    labels = torch.cat([train.y, val.y, test.y])
    names = class_names or getattr(_items(train_data)[1], "classes", None)
    count = int(num_classes or (len(names) if names else int(labels.max()) + 1))
    if int(labels.min()) < 0 or int(labels.max()) >= count:
        raise DataError(f"labels must lie in [0, {count}); found {int(labels.min())}..{int(labels.max())}")
    names = [str(c) for c in names] if names else [str(k) for k in range(count)]
    if len(names) != count:
        raise DataError(f"class_names: {len(names)} names for {count} classes")
    return DataBundle(train=train, val=val, test=test, num_classes=count,
                      input_shape=shape, class_names=names, name=PYTHON_DATA)


# -- models ------------------------------------------------------------------------------------
def _signature(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def _rebuilds(spec: dict, model: nn.Module, input_shape, num_classes: int) -> bool:
    """Whether ``spec`` builds a model with ``model``'s parameter names and shapes (on the meta
    device when the builder allows it, so checking a candidate costs no memory)."""
    from types import SimpleNamespace

    from kd_engine.models import build_model

    target = _signature(model)
    namespace = SimpleNamespace(name=spec["name"], params=dict(spec.get("params") or {}))
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                built = build_model(namespace, input_shape, num_classes)
            return _signature(built) == target
        except Exception:  # noqa: BLE001 - a candidate that does not build is not the model
            continue
    return False


def _candidates(model: nn.Module) -> list[dict]:
    """Specs that may rebuild ``model``: timm's recorded architecture, the torchvision builders of
    its class's module, or its class imported by name when it takes no arguments."""
    found: list[dict] = []
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if arch:
        found.append({"name": "timm", "params": {"arch": arch}})
    module_name = type(model).__module__
    if module_name.startswith("torchvision.models"):
        from torchvision import models

        for name in models.list_models():
            if models.get_model_builder(name).__module__ == module_name:
                found.append({"name": "torchvision", "params": {"arch": name}})
    qualname = type(model).__qualname__
    if module_name != "__main__" and "<locals>" not in qualname and not module_name.startswith(("torch.", "timm.")):
        try:
            if getattr(importlib.import_module(module_name), qualname.split(".")[0], None) is not None:
                found.append({"name": "import", "params": {"target": f"{module_name}:{qualname}"}})
        except ImportError:
            pass
    return found


def model_spec(model: nn.Module, input_shape, num_classes: int, given: dict | None = None,
               role: str = "model") -> tuple[dict, str | None]:
    """The registry spec recorded for ``model`` and, when none rebuilds it, why (else None)."""
    if given is not None:
        get = given.get if isinstance(given, dict) else lambda key, default=None: getattr(given, key, default)
        spec = {"name": get("name"), "params": dict(get("params") or {})}  # what builds it, nothing else
        if not _rebuilds(spec, model, input_shape, num_classes):
            raise ConfigError(f"{role}_spec: {spec} does not build a model with the {role}'s parameter "
                              "names and shapes")
        return spec, None
    for spec in _candidates(model):
        if _rebuilds(spec, model, input_shape, num_classes):
            return spec, None
    cls = f"{type(model).__module__}.{type(model).__qualname__}"
    reason = (f"the {role} ({cls}) was built in Python and no registry spec or import target rebuilds it; "
              f"pass {role}_spec={{'name': 'import', 'params': {{'target': 'package.module:factory'}}}} "
              "to make it rebuildable")
    return {"name": PYTHON_MODEL, "params": {"class": cls}}, reason


def _last_spatial_layer(model: nn.Module, input_shape) -> str | None:
    """The deepest stage whose output is a (C, H, W) map larger than 1x1: the model's ``feature_layers`` when it
    names them, else its stages as `kd_engine.models.external` finds them in a torchvision model."""
    from kd_engine.models.external import _torchvision_stages
    from kd_engine.models.taps import layer_shapes

    names = list(getattr(model, "feature_layers", None) or []) or _torchvision_stages(model)
    try:
        shapes = layer_shapes(model, input_shape, names)
    except (ConfigError, RuntimeError, ValueError):  # a stage off the forward path: no maps
        return None
    spatial = [n for n in names if len(shapes[n]) == 3 and shapes[n][1] * shapes[n][2] > 1]
    return spatial[-1] if spatial else None


# -- the config ----------------------------------------------------------------------------------
def _section(value, key: str) -> dict:
    """A config section given as a name or a dict (``"adam"`` -> ``{"name": "adam"}``)."""
    return {key: value} if isinstance(value, str) else dict(value)


def _config(teacher_spec, student_spec, terms, weighting, optimizer, epochs, runs_dir, name,
            batch_size, settings: dict, pairs: list[dict]):
    from kd_engine.config import validate

    raw: dict[str, Any] = {"name": name, "epochs": epochs, "runs_dir": str(runs_dir), "student": student_spec,
                           "method": "standard" if teacher_spec else "scratch", **settings}
    raw["data"] = {"name": PYTHON_DATA, "batch_size": batch_size, **raw.get("data", {})}
    if teacher_spec:
        raw["teacher"] = teacher_spec
        distill = dict(raw.get("distill", {}))
        distill["terms"] = [_section(term, "loss") for term in terms]
        raw["distill"] = distill
        raw["weighting"] = _section(weighting, "strategy")
    if optimizer is not None:
        raw["optimizer"] = _section(optimizer, "name")
    if pairs:
        raw["record"] = {"features": pairs, **raw.get("record", {})}
    return validate(raw, "kd_engine.distill")


def make_trainer(teacher: nn.Module | None, student: nn.Module, train_data, val_data=None, *,
                 test_data=None, terms: Sequence[str | dict] = ("kd",), weighting: str | dict = "uniform",
                 optimizer: str | dict | None = None, epochs: int = 1, runs_dir: str | Path = "runs",
                 name: str = "distill", batch_size: int | None = None, num_classes: int | None = None,
                 class_names: Sequence[str] | None = None, teacher_spec: dict | None = None,
                 student_spec: dict | None = None, run_id: str | None = None, **settings: Any):
    """A `kd_engine.trainer.Trainer` for ``teacher`` -> ``student`` on the given data, with its
    run created in ``runs_dir``; advance it with ``fit(steps=N)`` / ``fit(epochs=N)`` / ``run()``.

    ``val_data`` is evaluated after every epoch (``eval_every``), ``test_data`` once at the end;
    both are optional.
    ``teacher=None`` trains the student alone (method ``scratch``). ``terms`` are loss names or
    `TermConfig` dicts (``{"loss": "kd", "params": {"temperature": 4}}``); ``weighting`` a
    strategy name or ``{"strategy": ..., "params": ...}``; ``optimizer`` a name or an optimizer
    section. Any other top-level config field goes in ``settings`` (``seed=1``, ``method="dkd"``,
    ``schedule={"name": "constant"}``, ``record={...}``, ``threads=1``).
    """
    from kd_engine.checks import check_names
    from kd_engine.run import check_method
    from kd_engine.tasks import TASKS
    from kd_engine.trainer import Trainer
    from kd_engine.trainers import runtime

    data = _bundle(train_data, val_data, test_data, num_classes, class_names)
    if batch_size is None:
        batch_size = getattr(train_data, "batch_size", None) or 64
    specs, reasons = {}, {}
    for role, model, given in (("teacher", teacher, teacher_spec), ("student", student, student_spec)):
        if model is not None:
            if not isinstance(model, nn.Module):
                raise ConfigError(f"{role}: expected an nn.Module, got {type(model).__name__}")
            specs[role], reason = model_spec(model, data.input_shape, data.num_classes, given, role)
            if reason:
                reasons[role] = reason
    pairs = []
    user_record = settings.get("record", {})
    if reasons and teacher is not None and not user_record.get("features"):
        layers = [_last_spatial_layer(m, data.input_shape) for m in (student, teacher)]
        if all(layers):  # the probe's attention maps stand in for the attributions
            pairs = [{"student": layers[0], "teacher": layers[1]}]
    cfg = _config(specs.get("teacher"), specs["student"], terms, weighting, optimizer, epochs, runs_dir,
                  name, batch_size, settings, pairs)
    check_names(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = runtime.resolve_device(cfg.device)
    runtime.seed_everything(cfg.seed)
    task_class = TASKS.get("classification")
    method = task_class.methods.get(cfg.method, field="method")
    check_method(method, cfg, runtime.SINGLE)
    torch.manual_seed(cfg.seed + 1)  # adapters get the same init as in `kdw train`
    distiller = method(cfg, student, teacher, data.input_shape).to(device)
    distiller.check_data(data)
    task = task_class(cfg, data, device, runtime.SINGLE, lambda: runtime.autocast(device, cfg.amp))
    trainer = Trainer(cfg, task, distiller, teacher_source="python" if teacher is not None else None,
                      run_id=run_id)
    extra: dict[str, Any] = {"made_by": "kd_engine.distill"}
    if teacher is not None:  # the engine did not train it: the leakage guard cannot vouch for it
        extra["teacher_origin"] = "external"
    if reasons:
        extra["not_rebuildable"] = reasons
    trainer.writer.set_meta(**extra)
    return trainer


def distill(teacher: nn.Module | None, student: nn.Module, train_data, val_data=None, **options: Any):
    """Distil ``teacher`` into ``student`` for ``epochs`` epochs and return the recorded run (a
    `kd_engine.store.Run`); ``student`` is trained in place. Options as in `make_trainer`."""
    from kd_engine.store import Run

    return Run(make_trainer(teacher, student, train_data, val_data, **options).run())
