"""Metrics of dense prediction: IoU per class and mIoU for label maps, RMSE for continuous maps.

Also the F1 of a thresholded edge map and Δ_MTL, the multi-task summary of several metrics
against a baseline (Maninis et al., CVPR 2019; Vandenhende et al., TPAMI 2021).

Pure functions of arrays. A dataset's IoU comes from one confusion matrix summed over all its
pixels (the usual definition, as in the PASCAL VOC and Cityscapes benchmarks), not from a mean
of per-image IoUs; the per-image values (``image_miou``) serve the per-instance records.
"""
from __future__ import annotations

import numpy as np

__all__ = ["pixel_confusion", "iou_per_class", "miou", "image_miou", "rmse", "image_rmse", "edge_counts",
           "f1_from_counts", "edge_f1", "delta_mtl", "image_mse", "foreground_mse", "psnr"]


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


def edge_counts(true: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of the pixels with ``prob`` >= threshold
    as predicted edges against ``true`` > 0.5 (pixel-exact, no boundary tolerance)."""
    true = np.asarray(true).reshape(-1) > 0.5
    pred = np.asarray(prob).reshape(-1) >= threshold
    if true.shape != pred.shape:
        raise ValueError(f"true and predicted edge maps differ in size: {true.size} and {pred.size} pixels")
    return int((true & pred).sum()), int((~true & pred).sum()), int((true & ~pred).sum())


def f1_from_counts(tp: int, fp: int, fn: int) -> float:
    """2·TP / (2·TP + FP + FN); NaN when there is neither a true nor a predicted positive."""
    denominator = 2 * tp + fp + fn
    return float(2 * tp / denominator) if denominator else float("nan")


def edge_f1(true: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> float:
    """F1 of the edge pixels at a probability threshold (0.5 by default), over all pixels given."""
    return f1_from_counts(*edge_counts(true, prob, threshold))


def delta_mtl(metrics: dict[str, float], baseline: dict[str, float], lower_is_better: set[str] | frozenset = frozenset()) -> float:
    """Δ_MTL = (1/T) Σ_t s_t (M_t − B_t) / B_t over the T metrics of ``baseline``, with s_t = −1 for
    a metric where lower is better (an error such as RMSE) and +1 otherwise: the mean relative
    improvement over the baseline, positive when the model is better on average."""
    if not baseline:
        raise ValueError("delta_mtl: the baseline has no metrics")
    missing = sorted(set(baseline) - set(metrics))
    if missing:
        raise ValueError(f"delta_mtl: metrics {missing} are in the baseline but not in the model's values")
    terms = [(-1.0 if name in lower_is_better else 1.0) * (metrics[name] - base) / base
             for name, base in baseline.items()]
    return float(np.mean(terms))


def image_mse(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(N,) mean squared error of each image of (N, C, H, W) arrays."""
    diff = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    return (diff.reshape(len(diff), -1) ** 2).mean(axis=1)


def foreground_mse(true: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N,) fMSE: each image's squared error averaged over its foreground pixels (``mask`` (N, H, W)
    > 0.5) and channels; NaN for an image without foreground."""
    diff = (np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)) ** 2
    keep = (np.asarray(mask) > 0.5)[:, None]
    count = keep.reshape(len(diff), -1).sum(axis=1) * diff.shape[1]
    total = (diff * keep).reshape(len(diff), -1).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def psnr(true: np.ndarray, pred: np.ndarray, peak: float = 1.0) -> np.ndarray:
    """(N,) peak signal-to-noise ratio of each image, 10·log10(peak² / MSE) in dB (inf when equal)."""
    mse = image_mse(true, pred)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(peak ** 2 / mse)
