"""Layers that predict trouble: does a layer's per-instance teacher-student disparity tell which
instances the student gets wrong?

For each recorded layer pair and epoch, the probe instances' disparity (`disparity.py`) is set
against the student's record of the same instances at the same epoch: AUROC (scikit-learn) of
disparity as a score for "the student is wrong", and Spearman's rho (SciPy) against the student's
loss. A layer with a high AUROC is one where a student that drifts from its teacher also errs.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from kd_engine.trainers.instance_disparity import KIND
from kd_engine.store import Run

COLUMNS = ["epoch", "student_layer", "teacher_layer", "instances", "errors", "auroc", "spearman",
           "spearman_p"]


def disparity_records(run: Run) -> pd.DataFrame:
    """Long format: epoch, split, student_layer, teacher_layer, instance_id, disparity."""
    frames = []
    for row in run.artifacts(KIND).itertuples():
        meta = json.loads(row.meta or "{}")
        values = run.load_artifact(row.name).astype(np.float64)
        ids = np.asarray(meta.get("instance_ids", []), dtype=np.int64)
        for k, (student_layer, teacher_layer) in enumerate(meta.get("pairs", [])):
            frames.append(pd.DataFrame({"epoch": int(row.epoch), "split": meta.get("split", "val"),
                                        "student_layer": student_layer, "teacher_layer": teacher_layer,
                                        "instance_id": ids, "disparity": values[:, k]}))
    if not frames:
        return pd.DataFrame(columns=["epoch", "split", "student_layer", "teacher_layer", "instance_id", "disparity"])
    return pd.concat(frames, ignore_index=True)


def joined_records(run: Run) -> pd.DataFrame:
    """Disparity records joined with the student's label, prediction and loss on each instance."""
    disparity = disparity_records(run)
    if disparity.empty:
        return disparity.assign(label=[], student_pred=[], student_loss=[])
    parts = []
    for (split, epoch), group in disparity.groupby(["split", "epoch"]):
        student = run.instances(split, epoch=int(epoch), columns=["instance_id", "label", "student_pred",
                                                                  "student_loss"])
        student = student.drop_duplicates("instance_id", keep="last")
        parts.append(group.merge(student, on="instance_id"))
    return pd.concat(parts, ignore_index=True)


def layer_prediction(run: Run) -> pd.DataFrame:
    """Per epoch and layer pair: AUROC of disparity for the student's error, Spearman's rho (and
    its p-value) of disparity against the student's loss. NaN where a score is undefined (no
    error, or every instance wrong)."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    joined = joined_records(run).dropna(subset=["disparity", "student_pred", "label"])
    rows = []
    for (epoch, s_layer, t_layer), group in joined.groupby(["epoch", "student_layer", "teacher_layer"]):
        wrong = (group["student_pred"] != group["label"]).to_numpy()
        auroc = roc_auc_score(wrong, group["disparity"]) if 0 < wrong.sum() < len(wrong) else np.nan
        losses = group["student_loss"].to_numpy(float)
        ok = np.isfinite(losses)
        rho, p = (spearmanr(group["disparity"].to_numpy()[ok], losses[ok]) if ok.sum() > 2
                  else (np.nan, np.nan))
        rows.append((int(epoch), s_layer, t_layer, len(group), int(wrong.sum()), float(auroc), float(rho), float(p)))
    return pd.DataFrame(rows, columns=COLUMNS)


def layer_ranking(run: Run, epoch: int | None = None, scores: pd.DataFrame | None = None) -> pd.DataFrame:
    """The layers at `epoch` (default: the last scored), best predictor of the student's errors first."""
    scores = layer_prediction(run) if scores is None else scores
    if scores.empty:
        return scores
    epoch = int(scores["epoch"].max()) if epoch is None else int(epoch)
    at = scores[scores["epoch"] == epoch]
    return at.sort_values(["auroc", "spearman"], ascending=False, na_position="last").reset_index(drop=True)
