"""The AID notebooks' shared set-up: the detector pairs at each budget, the teacher that has not
seen the students' images, the label-noise setting and the arms' weighting overrides.

``notebooks/aid`` (the main comparison) and ``notebooks/aid_extra`` (α sweep, cross-fitted
teachers, self-distillation) build their configs here, so both run the same models, data and
schedules and their numbers can be read side by side.

Why the teacher trains on other scenes: a teacher scored on the images it trained on has
memorised them, its per-instance loss is uniformly small and AID's weights sit near 1.
``DISJOINT_SPLIT`` is another split seed of the same generator, so none of its images is in a
student's training, validation or test set.
"""
from __future__ import annotations

import copy
from typing import Any

import pandas as pd

from kd_engine.config import load_raw
from kd_engine.experiment import apply_budget, repo_file
from kd_engine.store import open_run
from kd_engine.weighting.aid_report import image_weights

# the scene generator's label noise on the students' training labels (about 20 % of the boxes)
NOISE = {"wrong_class_rate": 0.10, "drop_box_rate": 0.05, "box_jitter": 0.3, "jitter_rate": 0.05}
DISJOINT_SPLIT = 1000
PAIRS = {"fcos": ("FCOS (single-stage)", "configs/aid_fcos.yaml"),
         "frc": ("Faster R-CNN (two-stage)", "configs/aid_fasterrcnn.yaml")}
ADAMW = {"name": "adamw", "lr": 0.002, "weight_decay": 0.0001}
UNIFORM = {"weighting.strategy": "uniform", "weighting.params": {}}

# Per budget: data, per pair (teacher epochs, student epochs, student optimizer), model sizes.
# full: students 64 steps an epoch (512 images, batch 8), teachers 128 (1024 disjoint images:
# more images, not more steps, is what lifts a teacher here). FCOS students 1152 steps at lr 4e-3
# (the levers in docs/aid_levers.md), its teacher 2560 steps; Faster R-CNN learns in fewer steps
# (students 256, teacher 1024: 0.21 and 0.64 test mAP, and the main notebook took 56 minutes; at
# 384 / 1536 steps they reached 0.29 and 0.66, but the comparison took 86 minutes).
SIZES: dict[str, dict[str, Any]] = {
    "smoke": {"data": {"n_train": 24, "n_val": 8, "n_test": 8, "image_size": 64},
              "fcos": (1, 1, None), "frc": (1, 1, None), "eval_every": 1,
              "teacher": {"width": 16, "depth": 1, "fpn_channels": 64},
              "student": {"width": 8, "depth": 1, "fpn_channels": 64}},
    "full": {"data": {"n_train": 512, "n_val": 64, "n_test": 128, "image_size": 96, "objects": [1, 4],
                      "clutter": [0, 2], "min_box_size": 5.0},
             "teacher_data": {"n_train": 1024},
             "fcos": (20, 18, {**ADAMW, "lr": 0.004}), "frc": (8, 4, ADAMW), "eval_every": 100,
             "teacher_optimizer": {"fcos": {**ADAMW, "lr": 0.004}, "frc": ADAMW},
             "schedule": {"name": "cosine", "warmup_iters": 50}, "anchor_base": 6.0,
             "teacher": None, "student": None},
    "gpu": {"data": {"n_train": 1000, "n_val": 200, "n_test": 200, "image_size": 128},
            "fcos": (24, 24, None), "frc": (24, 24, None), "eval_every": 6, "teacher": None, "student": None},
}


def pair_config(key: str, budget: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The raw config of pair ``key`` ("fcos" or "frc") at ``budget`` (``settings`` from
    ``kd_engine.experiment.budget_settings``): its teacher trains on the disjoint scenes, and the
    teacher's pass is cached per image (offline KD: the scenes are not augmented)."""
    sizes = SIZES[budget]
    teacher_epochs, epochs, optimizer = sizes[key]
    raw = apply_budget(load_raw(repo_file(PAIRS[key][1])),
                       {**settings, "epochs": epochs, "teacher_epochs": teacher_epochs})
    raw["eval_every"] = min(sizes["eval_every"], epochs)
    raw["data"]["params"] = {**raw["data"]["params"], **sizes["data"]}
    raw["data"]["split_seed"] = 0
    for role in ("teacher", "student"):
        if sizes[role]:
            raw[role]["params"] = {**raw[role]["params"], **sizes[role]}
        if sizes.get("anchor_base"):
            raw[role]["params"]["anchor_base"] = sizes["anchor_base"]
    if budget != "gpu":
        raw["teacher"]["train"]["optimizer"] = dict(sizes.get("teacher_optimizer", {}).get(key, ADAMW))
        raw["optimizer"] = dict(optimizer or ADAMW)
        if "schedule" in sizes:
            raw["schedule"] = dict(sizes["schedule"])
            raw["teacher"]["train"]["schedule"] = dict(sizes["schedule"])
    teacher_data = copy.deepcopy(raw["data"])
    teacher_data["params"].update(sizes.get("teacher_data", {}))
    raw["teacher"]["data"] = {**teacher_data, "split_seed": DISJOINT_SPLIT}
    raw["distill"]["params"] = {**raw["distill"].get("params", {}), "teacher_pass_cache": True}
    raw["device"] = "cuda" if budget == "gpu" else "cpu"
    if budget == "gpu":
        raw["threads"] = None
    return raw


def aid_arm(alpha: float = 0.1, **extra) -> dict[str, Any]:
    """Overrides of an AID arm (per image × level weights; ``shuffle=True`` for the control)."""
    return {"weighting.strategy": "aid",
            "weighting.params": {"alpha": alpha, "granularity": "per_image_level", **extra}}


def noisy(base: dict[str, Any]) -> dict[str, Any]:
    """Overrides that put the label noise on the students' training labels (the teacher's own
    data, ``teacher.data``, stays clean)."""
    return {"data.params": {**base["data"]["params"], **NOISE}}


def last_epoch(run_dir, columns=None) -> pd.DataFrame:
    """The rows a run recorded over its last training epoch (image × level rows, per-GT rows too)."""
    rows = open_run(run_dir).instances(split="train", columns=columns)
    return rows[rows["epoch"] == rows["epoch"].max()]


def per_image(run_dir, weight: str = "aid_weight") -> pd.DataFrame:
    """One weight per training image over the run's last epoch (the mean over FPN levels of AID's
    own weight) and its count of corrupted annotations (0 when the labels are clean)."""
    rows = last_epoch(run_dir)
    if "label_noise" not in rows:
        rows = rows.assign(label_noise=0)
    return image_weights(rows, weight)


__all__ = ["ADAMW", "DISJOINT_SPLIT", "NOISE", "PAIRS", "SIZES", "UNIFORM", "aid_arm", "last_epoch",
           "noisy", "pair_config", "per_image"]
