"""Models the workbench did not define: ``torchvision``, ``timm`` and ``import`` in ``MODELS``.

A config names them like any built-in model, so ``kdw train``, a dashboard launch and the
Attention page (which rebuilds a run's models from the stored spec) all build them through the
one ``build_model`` path::

    student: {name: torchvision, params: {arch: mobilenet_v3_small}}
    teacher: {name: timm, params: {arch: resnet18}, checkpoint: teacher.pth}
    student: {name: import, params: {target: "my_models:small_net", width: 8}}

The returned module is the library's own model, not a wrapper, so its module paths (``layer2``,
``features.3``) and state_dict keys are the ones every published checkpoint uses. The builders
set two attributes the engine reads: ``feature_layers`` (a short list of stage outputs worth
distilling and recording) and ``embedding_layer`` (the pooled representation before the head).

Nothing is downloaded at run time: ``weights``/``pretrained`` are refused; load published
weights from a file with ``teacher.checkpoint`` / ``student.init`` instead.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Sequence

import torch
from torch import nn

from kd_engine.models.registry import MODELS

# Names under which libraries keep the pooled features that feed the classifier.
_EMBEDDING_NAMES = ("avgpool", "global_pool", "head.global_pool", "fc_norm", "pre_logits", "pool")
_DOWNLOAD_KEYS = ("weights", "weights_backbone", "pretrained", "pretrained_cfg", "checkpoint_path")


def _refuse_downloads(options: dict[str, Any]) -> None:
    for key in _DOWNLOAD_KEYS:
        if options.get(key) not in (None, False):
            raise ValueError(f"{key}={options[key]!r}: nothing is downloaded at run time; save the "
                             "weights to a .safetensors/.pth file and set teacher.checkpoint or student.init")


def _first(model: nn.Module, kind: type) -> tuple[str, nn.Module] | None:
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, kind)), None)


def _last(model: nn.Module, kind: type) -> tuple[str, nn.Module] | None:
    found = None
    for name, module in model.named_modules():
        if isinstance(module, kind):
            found = (name, module)
    return found


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)


def adapt_input_channels(model: nn.Module, channels: int) -> None:
    """Give the first convolution ``channels`` inputs (a 3-channel architecture on grey images).

    The new kernel is freshly initialised: the input it replaces had another meaning.
    """
    found = _first(model, nn.Conv2d)
    if found is None or found[1].in_channels == channels:
        return
    name, conv = found
    _replace(model, name, nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride,
                                    conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                                    conv.padding_mode))


def replace_head(model: nn.Module, num_classes: int) -> str:
    """Replace the classifier by a fresh one with ``num_classes`` outputs; return its path.

    timm models know their classifier (``reset_classifier``); otherwise the last ``nn.Linear``
    registered is taken to be it, which holds for torchvision's classification models.
    """
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(num_classes)
        return "classifier"
    found = _last(model, nn.Linear)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier to resize")
    name, head = found
    if head.out_features != num_classes:
        _replace(model, name, nn.Linear(head.in_features, num_classes, bias=head.bias is not None))
    return name


def describe_layers(model: nn.Module, stages: Sequence[str]) -> nn.Module:
    """Set ``feature_layers`` (the given stages that exist) and ``embedding_layer`` on a model."""
    names = dict(model.named_modules())
    if not getattr(model, "feature_layers", None):
        model.feature_layers = [s for s in stages if s in names]
    if not getattr(model, "embedding_layer", None):
        model.embedding_layer = next((n for n in _EMBEDDING_NAMES if n in names), None)
    return model


def _torchvision_stages(model: nn.Module) -> list[str]:
    """Stage outputs: resnet-style ``layerN``, the children of ``features`` (VGG, MobileNet,
    EfficientNet, ConvNeXt), the encoder blocks of a ViT, else the top-level children."""
    names = dict(model.named_modules())
    stages = [f"layer{i}" for i in range(1, 5) if f"layer{i}" in names]
    if not stages and isinstance(names.get("features"), nn.Sequential):
        stages = [f"features.{n}" for n, _ in names["features"].named_children()]
    if not stages and "encoder.layers" in names:
        stages = [f"encoder.layers.{n}" for n, _ in names["encoder.layers"].named_children()]
    if not stages:
        stages = [n for n, m in model.named_children() if not isinstance(m, nn.Linear)]
    return stages + [n for n in _EMBEDDING_NAMES[:1] if n in names]


def _dict_output_to_logits(model: nn.Module) -> nn.Module:
    """Segmentation models return ``{"out": ..., "aux": ...}``; give the instance a subclass whose
    forward returns the ``out`` map, so the engine sees one tensor and the state_dict is unchanged."""
    base = type(model)

    def forward(self, x):
        return base.forward(self, x)["out"]

    model.__class__ = type(base.__name__, (base,), {"forward": forward, "__module__": base.__module__})
    return model


@MODELS.register("torchvision")
def torchvision_model(input_shape: Sequence[int], num_classes: int, arch: str = "",
                      **options: Any) -> nn.Module:
    """Any ``torchvision.models`` architecture by name, randomly initialised, with the dataset's
    classes. Extra params go to the torchvision builder (e.g. ``width_mult``, ``dropout``)."""
    from torchvision import models

    allowed = models.list_models(module=models)
    segmentation = models.list_models(module=models.segmentation)
    detection = models.list_models(module=models.detection)
    choices = sorted(set(allowed) | set(segmentation) | set(detection))
    if arch not in choices:
        from difflib import get_close_matches

        near = get_close_matches(str(arch), choices, n=5) or choices[:10]
        raise ValueError(f"arch {arch!r} is not a torchvision model (closest: {', '.join(near)})")
    _refuse_downloads(options)
    builder = models.get_model_builder(arch)
    accepted = inspect.signature(builder).parameters
    kwargs: dict[str, Any] = {"weights": None, "num_classes": int(num_classes), **options}
    if "weights_backbone" in accepted:  # segmentation/detection builders default to downloading one
        kwargs["weights_backbone"] = None
    if arch in detection:
        kwargs.setdefault("min_size", int(input_shape[1]))
        kwargs.setdefault("max_size", int(max(input_shape[1:])))
    if arch in segmentation:
        kwargs.setdefault("aux_loss", False)
    model = builder(**kwargs)
    if arch in segmentation:
        model = _dict_output_to_logits(model)
        return describe_layers(model, [f"backbone.{n}" for n, _ in model.backbone.named_children()])
    if arch in detection:  # the backbone's stages and the FPN, whose levels detection KD reads
        body = model.backbone.body
        return describe_layers(model, [f"backbone.body.{n}" for n, _ in body.named_children()] + ["backbone.fpn"])
    adapt_input_channels(model, int(input_shape[0]))
    return describe_layers(model, _torchvision_stages(model))


@MODELS.register("timm")
def timm_model(input_shape: Sequence[int], num_classes: int, arch: str = "", **options: Any) -> nn.Module:
    """Any timm architecture by name, randomly initialised, with the dataset's classes and input
    channels. Extra params go to ``timm.create_model`` (e.g. ``img_size``, ``drop_rate``)."""
    try:
        import timm
    except ImportError:
        raise ValueError("timm is not installed: pip install 'kd-workbench[timm]'") from None
    if not timm.is_model(arch):
        from difflib import get_close_matches

        near = get_close_matches(str(arch), timm.list_models(), n=5)
        raise ValueError(f"arch {arch!r} is not a timm model"
                         + (f" (closest: {', '.join(near)})" if near else ""))
    _refuse_downloads(options)
    model = timm.create_model(arch, pretrained=False, num_classes=int(num_classes),
                              in_chans=int(input_shape[0]), **options)
    stages = [info["module"] for info in getattr(model, "feature_info", []) or []]
    return describe_layers(model, stages)


def import_target(target: str) -> Callable[..., Any]:
    """``package.module:attribute`` -> the object; ValueError in one line when it is not there."""
    if not isinstance(target, str) or target.count(":") != 1 or not all(target.split(":")):
        raise ValueError(f"target {target!r} must be 'package.module:factory'")
    module_name, attr = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"target {target!r}: cannot import {module_name!r} ({exc}); "
                         "is it on PYTHONPATH?") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"target {target!r}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"target {target!r} is not callable")
    return obj


@MODELS.register("import")
def imported_model(input_shape: Sequence[int], num_classes: int, target: str = "",
                   resize_head: bool = False, **options: Any) -> nn.Module:
    """A user's factory: ``target: "package.module:factory"``, other params as its keywords.

    The factory also gets ``num_classes`` and ``input_shape`` when its signature names them.
    A model with another number of outputs is refused, unless ``resize_head: true`` swaps its
    classifier for one with the dataset's classes.
    """
    factory = import_target(target)
    try:
        accepted = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepted = {}
    kwargs = dict(options)
    for key, value in (("num_classes", int(num_classes)), ("input_shape", tuple(input_shape))):
        if key in accepted and key not in kwargs:
            kwargs[key] = value
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"target {target!r} returned a {type(model).__name__}, not an nn.Module")
    outputs = _output_size(model, input_shape)
    if outputs != int(num_classes):
        if not resize_head:
            raise ValueError(f"target {target!r} built a model with {outputs} outputs, but the data has "
                             f"{num_classes} classes; accept num_classes in the factory or set resize_head: true")
        replace_head(model, int(num_classes))
    return describe_layers(model, [n for n, m in model.named_children() if not isinstance(m, nn.Linear)])


def _output_size(model: nn.Module, input_shape: Sequence[int]) -> int | None:
    """Outputs per sample of one forward pass on zeros (eval mode, no gradients)."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(2, *[int(s) for s in input_shape]))
    finally:
        model.train(was_training)
    return int(out.shape[1]) if isinstance(out, torch.Tensor) and out.dim() >= 2 else None
