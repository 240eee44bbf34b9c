"""One-class digits for unsupervised anomaly detection (task ``anomaly``), and the disjoint half
of digits its teacher learns from.

The 1797 digits are cut once, stratified by digit and fixed by ``partition_seed`` (not the run
seed), into a teacher part (``teacher_fraction`` of every digit; dataset ``digits_teacher_half``,
an ordinary 10-way classification set with the config's own val/test fractions) and an anomaly
part (dataset ``digits_oneclass``), so the teacher never sees an image the anomaly runs train or
test on, and every seed reuses one cached teacher.

``digits_oneclass`` trains on images of one digit, ``normal_class``, only. The split seed cuts
that digit's images of the anomaly part into train / val / test (``val_fraction``,
``test_fraction``). Each evaluation split holds its normal images (label 0) and, as anomalies
(label 1), as many images of the other nine digits (kind 1) and, with ``pasted``, as many
copies of its normal images with a ``patch``×``patch`` square pasted in from an image of
another digit, where it changes the image most (kind 2; id = 10000 + the source image's id).
Pixel ground truth (``masks``): the pasted square for kind 2, all zero for normal images;
other-digit images have none (their mask is −1: excluded from pixel AUROC). ``y`` is the
anomaly label; ``num_classes`` stays 10, the digits the teacher's head was trained on.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from kd_engine.data.registry import DATASETS
from kd_engine.data.base import DataBundle, TensorInstanceDataset, cfg_get, split_bundle
from kd_engine.data.digits import _load
from kd_engine.errors import ConfigError
from kd_engine.params import read_params

PARTITION = {"teacher_fraction": 0.5, "partition_seed": 0}
PARAMS = {"normal_class": 0, "pasted": True, "patch": 3, **PARTITION}
PASTED_ID_OFFSET = 10_000
NORMAL, OTHER_DIGIT, PASTED = 0, 1, 2
KIND_NAMES = {NORMAL: "normal", OTHER_DIGIT: "other digit", PASTED: "pasted patch"}


class AnomalyDataset(TensorInstanceDataset):
    """Images with anomaly labels ``y``, and per image its ``kind``, source ``digit`` and pixel
    ground truth ``masks`` (N, H, W): 1 anomalous, 0 normal, −1 unknown."""

    def __init__(self, x, y, ids, images, kind, digit, masks):
        super().__init__(x, y, ids, images=images)
        self.kind, self.digit, self.masks = np.asarray(kind), np.asarray(digit), np.asarray(masks, np.float32)


@lru_cache(maxsize=4)
def partition(teacher_fraction: float, partition_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(teacher rows, anomaly rows) of sklearn's digits, stratified by digit."""
    _, y = _load()
    anomaly, teacher = train_test_split(np.arange(len(y)), test_size=teacher_fraction,
                                        random_state=partition_seed, stratify=y)
    return np.sort(teacher), np.sort(anomaly)


def _partition_params(params: dict, owner: str, allowed: dict) -> dict:
    p = read_params(params, allowed, "data.params", owner)
    if not 0.1 <= p["teacher_fraction"] <= 0.9:
        raise ConfigError(f"data.params.teacher_fraction: a number in [0.1, 0.9], got {p['teacher_fraction']}")
    return p


@DATASETS.register("digits_teacher_half")
def build_digits_teacher_half(data_cfg: Any, seed: int) -> DataBundle:
    """The teacher part as a 10-way classification set (split by the config's fractions)."""
    p = _partition_params(dict(cfg_get(data_cfg, "params", {}) or {}), "dataset digits_teacher_half", PARTITION)
    x, y = _load()
    rows, _ = partition(p["teacher_fraction"], p["partition_seed"])
    full = TensorInstanceDataset(torch.from_numpy(x[rows]), torch.from_numpy(y[rows]), torch.from_numpy(rows),
                                 images=x[rows, 0])
    return split_bundle(full, data_cfg, seed, num_classes=10, class_names=[str(i) for i in range(10)],
                        name="digits_teacher_half", meta={"source": "sklearn.datasets.load_digits", **p})


def paste(normal: np.ndarray, source: np.ndarray, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """Paste source's patch×patch square into normal where it changes the most (L1); the first
    such position in row-major order wins ties. Returns the image and its 0/1 mask."""
    h, w = normal.shape
    best, where = -1.0, (0, 0)
    for r in range(h - patch + 1):
        for c in range(w - patch + 1):
            change = float(np.abs(source[r:r + patch, c:c + patch] - normal[r:r + patch, c:c + patch]).sum())
            if change > best:
                best, where = change, (r, c)
    out, mask = normal.copy(), np.zeros_like(normal)
    r, c = where
    out[r:r + patch, c:c + patch] = source[r:r + patch, c:c + patch]
    mask[r:r + patch, c:c + patch] = 1.0
    return out, mask


@DATASETS.register("digits_oneclass")
def build_digits_oneclass(data_cfg: Any, seed: int) -> DataBundle:
    if cfg_get(data_cfg, "image_size") not in (None, 8):
        raise ConfigError("data.image_size: digits images are 8x8")
    p = _partition_params(dict(cfg_get(data_cfg, "params", {}) or {}), "dataset digits_oneclass", PARAMS)
    k = p["normal_class"]
    if not 0 <= k <= 9:
        raise ConfigError(f"data.params.normal_class: a digit 0-9, got {k}")
    if not 1 <= p["patch"] <= 6:
        raise ConfigError(f"data.params.patch: an integer in [1, 6], got {p['patch']}")
    x, y = _load()
    images = x[:, 0]
    _, rows = partition(p["teacher_fraction"], p["partition_seed"])
    rng = np.random.default_rng(seed)
    normal = rng.permutation(rows[y[rows] == k])
    others = rng.permutation(rows[y[rows] != k])
    n_test = math.ceil(float(cfg_get(data_cfg, "test_fraction", 0.2)) * len(normal))
    n_val = math.ceil(float(cfg_get(data_cfg, "val_fraction", 0.15)) * len(normal))
    if len(normal) - n_test - n_val < 2:
        raise ConfigError(f"data.test_fraction + data.val_fraction leave {len(normal) - n_test - n_val} "
                          f"training images of digit {k}; lower them")
    test_rows, val_rows, train_rows = normal[:n_test], normal[n_test:n_test + n_val], normal[n_test + n_val:]
    zeros = np.zeros((len(train_rows), 8, 8), np.float32)
    train = AnomalyDataset(torch.from_numpy(x[train_rows]), torch.zeros(len(train_rows), dtype=torch.int64),
                           torch.from_numpy(train_rows), images[train_rows], np.zeros(len(train_rows)),
                           y[train_rows], zeros)
    cursor = [0]

    def evaluation_split(normal_rows: np.ndarray) -> AnomalyDataset:
        n = len(normal_rows)
        other = others[cursor[0]:cursor[0] + n]
        sources = others[cursor[0] + n:cursor[0] + 2 * n] if p["pasted"] else others[:0]
        cursor[0] += 2 * n
        pasted = [paste(images[a], images[b], p["patch"]) for a, b in zip(normal_rows, sources)]
        imgs = np.concatenate([images[normal_rows], images[other],
                               np.asarray([im for im, _ in pasted], np.float32).reshape(-1, 8, 8)])
        masks = np.concatenate([np.zeros((n, 8, 8)), np.full((len(other), 8, 8), -1.0),
                                np.asarray([m for _, m in pasted]).reshape(-1, 8, 8)])
        kind = np.repeat([NORMAL, OTHER_DIGIT, PASTED], [n, len(other), len(pasted)])
        ids = np.concatenate([normal_rows, other, PASTED_ID_OFFSET + normal_rows[:len(pasted)]])
        digit = np.concatenate([y[normal_rows], y[other], y[normal_rows[:len(pasted)]]])
        return AnomalyDataset(torch.from_numpy(imgs[:, None].copy()), torch.from_numpy((kind != NORMAL).astype(np.int64)),
                              torch.from_numpy(ids), imgs, kind, digit, masks)

    test, val = evaluation_split(test_rows), evaluation_split(val_rows)
    return DataBundle(train=train, val=val, test=test, num_classes=10, input_shape=(1, 8, 8),
                      class_names=["normal", "anomalous"], name="digits_oneclass",
                      meta={"source": "sklearn.datasets.load_digits", "split_seed": seed, **p,
                            "kind_names": KIND_NAMES})


build_digits_oneclass.task = "anomaly"
