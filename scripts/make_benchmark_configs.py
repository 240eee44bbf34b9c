"""Write configs/cifar100/<method>/<teacher>_<student>.yaml: the CIFAR-100 protocol of the KD
literature (240 epochs, batch 64, SGD momentum 0.9, lr 0.05 or 0.01 for MobileNet/ShuffleNet
students, ×0.1 at epochs 150/180/210, weight decay 5e-4, random crop 32 with padding 4 and
horizontal flip) for each method on each teacher-student pair. Run it after changing a setting
here, so the 28 files stay consistent: `python scripts/make_benchmark_configs.py`."""
from __future__ import annotations

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


def terms(method: str, stages, beta: float) -> tuple[float, list[dict], dict | None]:
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
    raise ValueError(method)


def protocol(lr: float) -> tuple[dict, dict]:
    optimizer = {"name": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 5e-4}
    schedule = {"name": "multistep", "milestones": [150, 180, 210], "gamma": 0.1}
    return optimizer, schedule


def config(method: str, pair: str) -> dict:
    teacher, student, stages, beta = PAIRS[pair]
    task_weight, distill_terms, dot = terms(method, stages, beta)
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


METHODS = ("kd", "dkd", "dist", "dot", "fitnet", "at", "rkd")


def main() -> None:
    for method in METHODS:
        for pair in PAIRS:
            path = ROOT / method / f"{pair}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            header = (f"# CIFAR-100 {method.upper()}: {PAIRS[pair][0]} -> {PAIRS[pair][1]}, the literature's protocol.\n"
                      "# Written by scripts/make_benchmark_configs.py; results: README.md, Standard benchmarks.\n")
            path.write_text(header + yaml.safe_dump(config(method, pair), sort_keys=False))


if __name__ == "__main__":
    main()
