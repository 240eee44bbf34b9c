"""Class-incremental digit cells (WCBC-IOD, paper 2): the miniature of incremental object detection.

A 16×16 mosaic holds 2×2 cells; each cell is empty or holds one 8×8 scikit-learn digit. Every
cell is an "object" to classify into 11 classes: the ten digits and ``background`` (index 10, an
empty cell). The classes arrive in two tasks, split by ``split_incremental``: task 1 teaches the
old classes 0..old_classes−1, task 2 the new ones. What makes the problem incremental is how
task 2 is labelled: its mosaics also show old digits, but **only new digits are labelled**; an
old digit's cell carries the background label, exactly as an unannotated old object is
background to a detector's task loss. A model fine-tuned on task 2 is therefore taught to call
old digits background: that is the forgetting pressure.

``data.params.stage`` picks the training split:

- ``old``: task-1 mosaics (old digits and empty cells only), every cell labelled: the teacher's;
- ``new``: task-2 mosaics (new and old digits), old digits labelled background;
- ``joint``: task-1 and task-2 mosaics with every digit labelled (the joint-training upper bound).

All stages draw the same mosaics at a given split seed (task 1, task 2, validation and test are
made in that order whatever the stage), so a student on ``new`` and its teacher on ``old`` share
the digit pools and the evaluation mosaics. Validation and test mosaics show all ten digits and
label every cell. Train, validation and test cells come from disjoint pools of digit images
(a stratified split by the split seed). Each split keeps ``digits`` (N, 4): the true digit of
every cell (−1 for empty), whatever its label. ``y`` is (N, 4), the label per cell (row-major).
Instance ids: 0.. over task 1, task 2, validation, test (generator indices).
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from annotated_types import Ge, Interval, Le

from kd_engine.data.base import DataBundle, TensorInstanceDataset, cfg_get, stratified_split
from kd_engine.data.digits import _load
from kd_engine.data.registry import DATASETS
from kd_engine.errors import ConfigError
from kd_engine.params import Param, read_params

BACKGROUND = 10
STAGES = ("old", "new", "joint")
PARAMS = {"stage": Param("new", kind=Literal["old", "new", "joint"]), "old_classes": Param(5, Ge(1), Le(9)),
          "n_per_task": Param(1200, Ge(1)), "n_val": Param(300, Ge(1)), "n_test": Param(600, Ge(1)),
          "empty": Param(0.25, Interval(ge=0, lt=1)), "old_share": Param(0.4, Interval(ge=0, le=1))}


def split_incremental(digits: np.ndarray, old_classes: int, stage: str) -> np.ndarray:
    """Cell labels (same shape as ``digits``, −1 = empty) for a training stage: ``old`` and
    ``joint`` label every digit; ``new`` labels only digits ≥ old_classes and sends the old
    ones, like empty cells, to background."""
    if stage not in STAGES:
        raise ConfigError(f"data.params.stage: expected one of {', '.join(STAGES)}, got {stage!r}")
    labels = np.where(digits < 0, BACKGROUND, digits)
    if stage == "new":
        labels = np.where((digits >= 0) & (digits < old_classes), BACKGROUND, labels)
    return labels.astype(np.int64)


def cell_mosaics(images: np.ndarray, labels: np.ndarray, classes: np.ndarray, n: int, rng: np.random.Generator,
                 empty: float, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """n mosaics from a pool of (M, 8, 8) images: each of the 4 cells is empty with probability
    ``empty``, else a random image of a class drawn from ``classes`` (with ``weights``).
    Returns x (n, 1, 16, 16) and the true digit per cell (n, 4), −1 for empty."""
    by_class = {int(c): np.flatnonzero(labels == c) for c in classes}
    drawn = rng.choice(classes, size=(n, 4), p=weights)
    digits = np.where(rng.random((n, 4)) < empty, -1, drawn)
    x = np.zeros((n, 1, 16, 16), dtype=np.float32)
    for i in range(n):
        for cell in range(4):
            if digits[i, cell] >= 0:
                r, c = divmod(cell, 2)
                x[i, 0, 8 * r:8 * r + 8, 8 * c:8 * c + 8] = images[rng.choice(by_class[int(digits[i, cell])])]
    return x, digits.astype(np.int64)


def _dataset(x: np.ndarray, digits: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> TensorInstanceDataset:
    dataset = TensorInstanceDataset(torch.from_numpy(x), torch.from_numpy(labels), torch.from_numpy(ids),
                                    images=x[:, 0])
    dataset.digits = digits
    return dataset


@DATASETS.register("digit_cells_incremental")
def build_digit_cells_incremental(data_cfg: Any, seed: int) -> DataBundle:
    p = read_params(cfg_get(data_cfg, "params", {}), PARAMS, "data.params", "dataset digit_cells_incremental")
    if cfg_get(data_cfg, "image_size") not in (None, 16):
        raise ConfigError("data.image_size: digit cell mosaics are 16x16")
    images, labels = _load()
    images = images[:, 0]
    pools = stratified_split(labels, 0.15, 0.25, seed)
    rng = np.random.default_rng(seed)
    old = np.arange(p["old_classes"])
    new = np.arange(p["old_classes"], 10)
    every = np.arange(10)
    task2_weights = np.concatenate([np.full(len(old), p["old_share"] / len(old)),
                                    np.full(len(new), (1 - p["old_share"]) / len(new))])
    train_pool, val_pool, test_pool = pools
    made = [cell_mosaics(images[train_pool], labels[train_pool], old, p["n_per_task"], rng, p["empty"]),
            cell_mosaics(images[train_pool], labels[train_pool], every, p["n_per_task"], rng, p["empty"], task2_weights),
            cell_mosaics(images[val_pool], labels[val_pool], every, p["n_val"], rng, p["empty"]),
            cell_mosaics(images[test_pool], labels[test_pool], every, p["n_test"], rng, p["empty"])]
    starts = np.cumsum([0] + [len(d) for _, d in made])
    ids = [np.arange(starts[k], starts[k + 1], dtype=np.int64) for k in range(4)]
    stage = p["stage"]
    if stage == "joint":
        x_train = np.concatenate([made[0][0], made[1][0]])
        d_train, id_train = np.concatenate([made[0][1], made[1][1]]), np.concatenate(ids[:2])
    else:
        k = 0 if stage == "old" else 1
        x_train, d_train, id_train = made[k][0], made[k][1], ids[k]
    train = _dataset(x_train, d_train, split_incremental(d_train, p["old_classes"], stage), id_train)
    val, test = (_dataset(made[k][0], made[k][1], split_incremental(made[k][1], p["old_classes"], "joint"), ids[k])
                 for k in (2, 3))
    return DataBundle(train=train, val=val, test=test, num_classes=11, input_shape=(1, 16, 16),
                      class_names=[str(c) for c in range(10)] + ["background"], name="digit_cells_incremental",
                      meta={"source": "sklearn digits, 2x2 cells, class-incremental", "split_seed": seed, **p,
                            "old": old.tolist(), "new": new.tolist(), "background": BACKGROUND})


build_digit_cells_incremental.task = "incremental"
