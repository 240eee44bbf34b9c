"""Write configs/cifar100/<method>/<teacher>_<student>.yaml: the CIFAR-100 protocol of the KD
literature (240 epochs, batch 64, SGD momentum 0.9, lr 0.05 or 0.01 for MobileNet/ShuffleNet
students, ×0.1 at epochs 150/180/210, weight decay 5e-4, random crop 32 with padding 4 and
horizontal flip) for each method on each teacher-student pair, and configs/imagenet/<method>/
<teacher>_<student>.yaml (torchvision's recipe, see IMAGENET_HEADER). Run it after changing a
setting here, so the files stay consistent: `python scripts/make_benchmark_configs.py`."""
from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent / "configs" / "cifar100"
PAIRS = {  # teacher, student, (student, teacher) stage for hint/attention terms, DKD's beta
    "resnet32x4_resnet8x4": ("resnet32x4", "resnet8x4", [("layer1", "layer1"), ("layer2", "layer2"), ("layer3", "layer3")], 8.0),
    "wrn_40_2_wrn_16_2": ("wrn_40_2", "wrn_16_2", [("layer1", "layer1"), ("layer2", "layer2"), ("layer3", "layer3")], 6.0),
    "vgg13_vgg8": ("vgg13", "vgg8", [("layer2", "layer2"), ("layer3", "layer3"), ("layer4", "layer4")], 6.0),
    "resnet50_cifar_mobilenetv2_cifar": ("resnet50_cifar", "mobilenetv2_cifar",
                                         [("layer2", "layer2"), ("layer3", "layer3"), ("layer5", "layer4")], 8.0),
}
SMALL_STUDENTS = ("mobilenetv2_cifar", "shufflenetv1", "shufflenetv2")


def terms(method: str, stages, beta: float, models: tuple[str, str] = ()) -> tuple[float, list[dict], dict | None]:
    """(task weight, distillation terms, optimizer params) of each method's published setting."""
    kd = {"loss": "kd", "weight": 0.9, "params": {"temperature": 4.0}}
    if method == "kd":
        return 0.1, [kd], None
    if method == "dot":  # KD with DOT's split momentum (delta 0.075)
        return 0.1, [kd], {"delta": 0.075}
    if method == "dkd":
        return 1.0, [{"loss": "dkd", "weight": 1.0, "params": {"alpha": 1.0, "beta": beta, "temperature": 4.0},
                      "weight_schedule": {"kind": "linear_warmup", "epochs": 20}}], None
    if method == "dist":
        return 1.0, [{"loss": "dist", "weight": 1.0, "params": {"beta": 2.0, "gamma": 2.0, "temperature": 4.0}}], None
    if method == "fitnet":  # the middle stage as the hint, through a 1x1 conv regressor
        s, t = stages[1]
        return 1.0, [{"loss": "fitnet", "weight": 100.0, "student_layer": s, "teacher_layer": t,
                      "adapter": "conv1x1"}], None
    if method == "at":  # attention transfer on every stage, beta 1000
        return 1.0, [{"loss": "attention_transfer", "weight": 1000.0, "params": {"p": 2.0},
                      "student_layer": s, "teacher_layer": t} for s, t in stages], None
    if method == "rkd":  # distance 25 and angle 50 on the pooled embeddings
        return 1.0, [{"loss": "rkd", "weight": 1.0, "params": {"distance_weight": 25.0, "angle_weight": 50.0}}], None
    return catalogue_terms(method, stages, models)


def _stage_layers(stages, side: int, pooled: bool = False) -> str:
    """Comma-separated stage names of one side (0 student, 1 teacher), shallow to deep."""
    names = [pair[side] for pair in stages] + (["pool"] if pooled else [])
    return ",".join(names)


def catalogue_terms(method: str, stages, models) -> tuple[float, list[dict], dict | None]:
    """The catalogue methods with the weights of the peers' published CIFAR-100 settings
    (the CRD paper's benchmark and mdistiller): cross-entropy weight 1 and no KD term."""
    if method == "pkt":  # on the pooled embeddings
        return 1.0, [{"loss": "pkt", "weight": 30000.0}], None
    if method == "sp":  # Gram matrices of the last stage's maps
        s, t = stages[-1]
        return 1.0, [{"loss": "similarity_preserving", "weight": 3000.0, "student_layer": s,
                      "teacher_layer": t}], None
    if method == "nst":  # every stage, 50 each
        return 1.0, [{"loss": "nst", "weight": 50.0, "student_layer": s, "teacher_layer": t}
                     for s, t in stages], None
    if method == "cc":  # on the pooled embeddings, 0.02 (the CRD paper's benchmark)
        return 1.0, [{"loss": "cc", "weight": 0.02}], None
    if method == "vid":  # every stage, 1 each, variances starting at 5
        return 1.0, [{"loss": "vid", "weight": 1.0, "params": {"init_variance": 5.0},
                      "student_layer": s, "teacher_layer": t} for s, t in stages], None
    if method == "kdsvd":  # all stages at once (needs equal widths at each stage)
        return 1.0, [{"loss": "kdsvd", "weight": 1.0, "params": {"k": 1},
                      "student_layer": _stage_layers(stages, 0), "teacher_layer": _stage_layers(stages, 1)}], None
    if method == "ofd":  # pre-ReLU BatchNorm outputs, see OFD_LAYERS; the weight scales OFD's sum
        return 1.0, [{"loss": "ofd", "weight": 1e-3, "student_layer": s, "teacher_layer": t}
                     for s, t in ofd_layers(models, stages)], None
    if method == "crd":  # the contrastive term alone (0.8), 16384 negatives, 128-d, tau 0.07
        return 1.0, [{"loss": "crd", "weight": 0.8, "params": {"feat_dim": 128, "negatives": 16384,
                                                                "temperature": 0.07, "momentum": 0.5}}], None
    if method == "reviewkd":  # every stage plus the pooled embedding after a 20-epoch warm-up;
        # weight 1 (5 for resnet32x4 -> resnet8x4, as in mdistiller's config of that pair)
        weight = 5.0 if models == ("resnet8x4", "resnet32x4") else 1.0
        return 1.0, [{"loss": "reviewkd", "weight": weight, "params": {"mid_channels": 64},
                      "student_layer": _stage_layers(stages, 0, pooled=True),
                      "teacher_layer": _stage_layers(stages, 1, pooled=True),
                      "weight_schedule": {"kind": "linear_warmup", "epochs": 20}}], None
    raise ValueError(method)


def _last_bn(model_name: str, stage: str) -> str:
    """The last BatchNorm2d inside a stage, off the shortcut: its output is the map a ReLU reads
    (a post-activation block's bn2/bn3, a VGG stage's last conv BN, a pre-activation WRN
    block's bn2), so the teacher's BN gives OFD's margin exactly for the map that is tapped.
    Variant: in a post-activation residual block the paper distils the sum before the block's
    last ReLU (bn2 + shortcut); the zoo offers no tap on that sum, so bn2's output is used."""
    from torch import nn

    from kd_engine.config import ModelSpec
    from kd_engine.models import build_model

    model = build_model(ModelSpec(name=model_name), (3, 32, 32), 100)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)
             and n.startswith(stage + ".") and "shortcut" not in n and "downsample" not in n]
    return names[-1]


def ofd_layers(models: tuple[str, str], stages) -> list[tuple[str, str]]:
    """(student, teacher) pre-ReLU BatchNorm layers at each distilled stage, for OFD."""
    student, teacher = models
    return [(_last_bn(student, s), _last_bn(teacher, t)) for s, t in stages]


def protocol(lr: float) -> tuple[dict, dict]:
    optimizer = {"name": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 5e-4}
    schedule = {"name": "multistep", "milestones": [150, 180, 210], "gamma": 0.1}
    return optimizer, schedule


def config(method: str, pair: str) -> dict:
    teacher, student, stages, beta = PAIRS[pair]
    task_weight, distill_terms, dot = terms(method, stages, beta, (student, teacher))
    lr = 0.01 if student in SMALL_STUDENTS else 0.05
    optimizer, schedule = protocol(lr)
    if dot is not None:
        optimizer = {**optimizer, "name": "dot", "params": dot}
    t_optimizer, t_schedule = protocol(0.05)
    return {
        "name": f"cifar100_{method}_{pair}",
        "seed": 0,
        "epochs": 240,
        # all 50,000 training images train (val_fraction 0, as in the papers); the official
        # 10,000-image test split is reported at the end
        "data": {"name": "cifar100", "root": "data/cifar", "download": False, "augment": "cifar",
                 "val_fraction": 0.0, "batch_size": 64},
        "teacher": {"name": teacher, "train": {"epochs": 240, "optimizer": t_optimizer, "schedule": t_schedule}},
        "student": {"name": student},
        "distill": {"task_weight": task_weight, "terms": distill_terms},
        "optimizer": optimizer,
        "schedule": schedule,
    }


METHODS = ("kd", "dkd", "dist", "dot", "fitnet", "at", "rkd",
           "pkt", "sp", "nst", "cc", "vid", "kdsvd", "ofd", "crd", "reviewkd")
EQUAL_WIDTHS_ONLY = ("kdsvd",)  # compares student and teacher maps channel for channel


def pairs_of(method: str) -> list[str]:
    if method in EQUAL_WIDTHS_ONLY:
        return [p for p in PAIRS if p != "resnet50_cifar_mobilenetv2_cifar"]
    return list(PAIRS)


def main() -> None:
    for method in METHODS:
        for pair in pairs_of(method):
            path = ROOT / method / f"{pair}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            header = (f"# CIFAR-100 {method.upper()}: {PAIRS[pair][0]} -> {PAIRS[pair][1]}, the literature's protocol.\n"
                      "# Written by scripts/make_benchmark_configs.py; results: README.md, Standard benchmarks.\n")
            path.write_text(header + yaml.safe_dump(config(method, pair), sort_keys=False))



# ImageNet, torchvision's reference recipe: 100 epochs (the KD tables' length), SGD momentum 0.9,
# lr 0.1 for a batch of 256, weight decay 1e-4, ×0.1 at epochs 30, 60 and 90.
IMAGENET_ROOT = ROOT.parent / "imagenet"
IMAGENET_PAIRS = {  # teacher arch, student arch, DKD's beta (0.5 for R34→R18, 2.0 for R50→MobileNet)
    "resnet34_resnet18": ("resnet34", "resnet18", 0.5),
    "resnet50_mobilenet_v2": ("resnet50", "mobilenet_v2", 2.0),
}
IMAGENET_METHODS = ("kd", "dkd", "dist")
IMAGENET_HEADER = """\
# ImageNet {method}: {teacher} -> {student}, torchvision's recipe (100 epochs, batch 256, SGD lr 0.1,
# momentum 0.9, wd 1e-4, x0.1 at 30/60/90). Written by scripts/make_benchmark_configs.py.
# data.batch_size is per process: under DDP on N GPUs set data.batch_size=256/N to keep the
# recipe's 256, or scale optimizer.lr by (N x batch_size) / 256.
# The published numbers use torchvision's ImageNet-pretrained teacher. Nothing is downloaded here:
# get the state_dict once (torchvision.models.{teacher}(weights="DEFAULT").state_dict(), saved with
# torch.save) and add `--set teacher.checkpoint=/path/to/{teacher}.pth`; without it the teacher is
# first trained from scratch under teacher.train.
"""


def imagenet_terms(method: str, beta: float) -> tuple[float, list[dict]]:
    """ImageNet settings of the peers' tables (mdistiller): temperature 1; KD halves CE and KD;
    DKD alpha 1 with a one-epoch warm-up."""
    if method == "kd":
        return 0.5, [{"loss": "kd", "weight": 0.5, "params": {"temperature": 1.0}}]
    if method == "dkd":
        return 1.0, [{"loss": "dkd", "weight": 1.0, "params": {"alpha": 1.0, "beta": beta, "temperature": 1.0},
                      "weight_schedule": {"kind": "linear_warmup", "epochs": 1}}]
    if method == "dist":
        return 1.0, [{"loss": "dist", "weight": 1.0, "params": {"beta": 1.0, "gamma": 1.0, "temperature": 1.0}}]
    raise ValueError(method)


def imagenet_config(method: str, pair: str) -> dict:
    teacher, student, beta = IMAGENET_PAIRS[pair]
    task_weight, distill_terms = imagenet_terms(method, beta)
    optimizer = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}
    schedule = {"name": "multistep", "milestones": [30, 60, 90], "gamma": 0.1}
    return {
        "name": f"imagenet_{method}_{pair}",
        "seed": 0,
        "epochs": 100,
        # root/train/<class>/*.JPEG and root/val/<class>/*.JPEG (the held-out split reported at the end)
        "data": {"name": "imagefolder", "root": "data/imagenet", "augment": "imagenet", "image_size": 224,
                 "val_fraction": 0.0, "batch_size": 256, "eval_batch_size": 256},
        "teacher": {"name": "torchvision", "params": {"arch": teacher},
                    "train": {"epochs": 100, "optimizer": deepcopy(optimizer), "schedule": deepcopy(schedule)}},
        "student": {"name": "torchvision", "params": {"arch": student}},
        "distill": {"task_weight": task_weight, "terms": distill_terms},
        "optimizer": optimizer,
        "schedule": schedule,
    }


def write_imagenet() -> None:
    for method in IMAGENET_METHODS:
        for pair, (teacher, student, _) in IMAGENET_PAIRS.items():
            path = IMAGENET_ROOT / method / f"{pair}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            header = IMAGENET_HEADER.format(method=method.upper(), teacher=teacher, student=student)
            path.write_text(header + yaml.safe_dump(imagenet_config(method, pair), sort_keys=False))


if __name__ == "__main__":
    main()
    write_imagenet()
