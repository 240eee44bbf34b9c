"""Metrics of dense prediction: IoU per class and mIoU for label maps, RMSE for continuous maps.

Pure functions of arrays. A dataset's IoU comes from one confusion matrix summed over all its
pixels (the usual definition, as in the PASCAL VOC and Cityscapes benchmarks), not from a mean
of per-image IoUs; the per-image values (``image_miou``) serve the per-instance records.
"""
from __future__ import annotations

import numpy as np

__all__ = ["pixel_confusion", "iou_per_class", "miou", "image_miou", "rmse", "image_rmse"]


def pixel_confusion(true: np.ndarray, pred: np.ndarray, num_classes: int,
                    ignore_index: int | None = None) -> np.ndarray:
    """(K, K) counts of pixels with true class i (row) predicted as j (column). Pixels whose true
    class is ``ignore_index`` are left out; a class outside [0, K) is a ValueError."""
    true = np.asarray(true).reshape(-1).astype(np.int64)
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    if true.shape != pred.shape:
        raise ValueError(f"true and predicted maps differ in size: {true.size} and {pred.size} pixels")
    if ignore_index is not None:
        keep = true != ignore_index
        true, pred = true[keep], pred[keep]
    for name, values in (("true", true), ("predicted", pred)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} classes must lie in [0, {num_classes}), got {values.min()}..{values.max()}")
    return np.bincount(true * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """IoU_c = TP / (TP + FP + FN) for each class; NaN for a class absent from both the truth and
    the prediction (its IoU is undefined, and ``miou`` skips it)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)


def miou(true: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int | None = None) -> float:
    """Mean IoU over the classes that occur in the truth or the prediction."""
    iou = iou_per_class(pixel_confusion(true, pred, num_classes, ignore_index))
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def image_miou(true: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(N,) mIoU of each image of (N, H, W) maps, over the classes present in that image."""
    true, pred = np.asarray(true), np.asarray(pred)
    return np.asarray([miou(t, p, num_classes) for t, p in zip(true, pred)], dtype=np.float64)


def rmse(true: np.ndarray, pred: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Root mean squared error over all pixels (or those where ``mask`` is true)."""
    diff = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    if mask is not None:
        diff = diff[np.asarray(mask, dtype=bool)]
    return float(np.sqrt(np.mean(diff ** 2))) if diff.size else float("nan")


def image_rmse(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(N,) RMSE of each image of (N, H, W) maps."""
    diff = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    return np.sqrt((diff.reshape(len(diff), -1) ** 2).mean(axis=1))
