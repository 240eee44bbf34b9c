"""How AID's weights are spread, and whether low weight finds the labels that are wrong.

The scene generator records which annotations it corrupted (``label_noise`` per image on every
training row, ``noisy`` per box on per-GT rows), so the miniature can ask the paper's premise
directly: does w = exp(−α·L^T) drop on the instances the teacher gets wrong? The score is the
AUROC of 1 − w against the noise flag (scikit-learn's ``roc_auc_score``): 0.5 is chance, 1 means
every corrupted image got a lower weight than every clean one.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score


def weight_spread(weights) -> dict[str, float]:
    """Mean, std (n−1), 5th/95th percentiles and minimum of the weights (not only the mean: a
    mean near 1 can hide a tail of low weights, and a tail is what AID is about)."""
    w = np.asarray(weights, dtype=float)
    w = w[np.isfinite(w)]
    if not len(w):
        return {"mean": np.nan, "std": np.nan, "p5": np.nan, "p95": np.nan, "min": np.nan, "n": 0}
    return {"mean": float(w.mean()), "std": float(w.std(ddof=1)) if len(w) > 1 else np.nan,
            "p5": float(np.percentile(w, 5)), "p95": float(np.percentile(w, 95)),
            "min": float(w.min()), "n": int(len(w))}


def image_weights(rows: pd.DataFrame, weight: str = "aid_weight") -> pd.DataFrame:
    """One row per (epoch, image): the image's mean weight over its level rows (image rows only:
    per-GT rows are left out) and whether any of its annotations was corrupted."""
    if weight not in rows:
        weight = "weight"
    part = rows[rows["gt"] < 0] if "gt" in rows else rows
    grouped = part.groupby(["epoch", "instance_id"], as_index=False).agg(
        w=(weight, "mean"), label_noise=("label_noise", "max"))
    grouped["noisy"] = grouped["label_noise"] > 0
    return grouped


def _auroc(flag: np.ndarray, score: np.ndarray) -> float:
    flag = np.asarray(flag, dtype=bool)
    if flag.all() or not flag.any():
        return float("nan")  # one class only: AUROC is undefined
    return float(roc_auc_score(flag, score))


def noise_auroc(rows: pd.DataFrame, weight: str = "aid_weight") -> pd.DataFrame:
    """Per epoch: AUROC of 1 − w against "the image has a corrupted annotation", the counts, and
    (when per-GT rows exist) the same per box against "this box's label is corrupted"."""
    if "label_noise" not in rows:
        raise ValueError("no label_noise column: the run's data records no label noise")
    per_image = image_weights(rows, weight)
    out = []
    for epoch, part in per_image.groupby("epoch"):
        row = {"epoch": int(epoch), "auroc_image": _auroc(part["noisy"], 1 - part["w"]),
               "n_noisy": int(part["noisy"].sum()), "n_clean": int((~part["noisy"]).sum())}
        if "noisy" in rows and "gt" in rows:
            gts = rows[(rows["epoch"] == epoch) & (rows["gt"] >= 0)]
            col = weight if weight in gts else "weight"
            row["auroc_box"] = _auroc(gts["noisy"] > 0, 1 - gts[col]) if len(gts) else np.nan
        out.append(row)
    return pd.DataFrame(out)


def bootstrap_auroc(per_seed: list[pd.DataFrame], n_boot: int = 1000, seed: int = 0,
                    weight: str = "w") -> dict[str, float]:
    """AUROC of 1 − w against ``noisy``, averaged over seeds, with its spread over the images.

    Why not the spread over seeds: AID's weights are a function of the frozen teacher and the
    image only, so with the same images every student seed gets the same weights and the same
    AUROC (a standard deviation of 0 over seeds says nothing). What varies is which images the
    scenes happen to contain, so the images are resampled (with replacement, the same resample
    for every seed's frame) ``n_boot`` times. ``per_seed``: one frame per seed with
    ``instance_id``, ``noisy`` and the weight column (e.g. from ``image_weights`` at one epoch).
    Returns ``mean`` (on all images), ``std`` and the 2.5/97.5 percentiles ``lo``/``hi`` of the
    bootstrap distribution, and ``n_images``.
    """
    frames = [f.set_index("instance_id").sort_index() for f in per_seed]
    ids = frames[0].index.to_numpy()
    if any(not np.array_equal(f.index.to_numpy(), ids) for f in frames):
        raise ValueError("bootstrap_auroc: every seed's frame must hold the same images")
    flags = [f["noisy"].to_numpy(dtype=bool) for f in frames]
    scores = [1.0 - f[weight].to_numpy(dtype=float) for f in frames]
    mean = _finite_mean([_auroc(fl, sc) for fl, sc in zip(flags, scores)])
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(ids), len(ids))
        draws.append(_finite_mean([_auroc(fl[pick], sc[pick]) for fl, sc in zip(flags, scores)]))
    draws = np.asarray(draws, dtype=float)
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return {"mean": mean, "std": np.nan, "lo": np.nan, "hi": np.nan, "n_images": len(ids)}
    return {"mean": mean, "std": float(draws.std(ddof=1)), "lo": float(np.percentile(draws, 2.5)),
            "hi": float(np.percentile(draws, 97.5)), "n_images": len(ids)}


def _finite_mean(values) -> float:
    """Mean of the finite values (a resample with one class only has no AUROC), NaN if none."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


def auroc_verdict(stats: dict[str, float], chance: float = 0.5) -> str:
    """'resolved' when the bootstrap 95 % interval excludes chance, else 'within noise'."""
    if not np.isfinite(stats["lo"]) or not np.isfinite(stats["hi"]):
        return "within noise"
    return "resolved" if stats["lo"] > chance or stats["hi"] < chance else "within noise"


__all__ = ["auroc_verdict", "bootstrap_auroc", "image_weights", "noise_auroc", "weight_spread"]
