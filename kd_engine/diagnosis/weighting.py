"""What the weighting did: how the instance weights a run used relate to what is known about each
instance, for any weighting strategy (the weight recorded is the one used).

Three factors, each splitting the training instances in two:
- the teacher's correctness on the instance (its prediction at that epoch);
- the student's final correctness (its prediction at the last recorded training epoch);
- label noise, where the data knows it (a per-instance `noisy` column, 1 = corrupted label).

Per factor and group: count, mean and median weight; per factor: the AUROC of the weight for
telling the first group from the second (0.5: the weighting ignores the factor; 1: every
instance of the first group weighs more than every one of the second).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from kd_engine.store import Run

FACTORS = {  # column -> (first group, second group): the AUROC scores the first group as positive
    "teacher_correct": ("teacher right", "teacher wrong"),
    "student_final_correct": ("student finally right", "student finally wrong"),
    "clean_label": ("clean label", "noisy label"),
}


def weighting_frame(run: Run, epoch: int | None = None, column: str = "weight") -> pd.DataFrame:
    """Training instances at `epoch` (default: the last) with their weight and the three factors
    as booleans (NaN where unknown). `column` picks another per-instance decision to analyse as
    the weight (a method's `selected` flag, a gate value). Empty when the run recorded none."""
    epochs = run.instance_epochs("train")
    known = set(run.instance_columns())
    if not epochs or column not in known:
        return pd.DataFrame(columns=["instance_id", "epoch", "weight", *FACTORS])
    epoch = epochs[-1] if epoch is None else int(epoch)
    wanted = ("instance_id", "label", column, "teacher_pred", "student_pred", "noisy")
    frame = run.instances("train", epoch=epoch, columns=[c for c in dict.fromkeys(wanted) if c in known])
    for name in frame.columns:
        frame[name] = pd.to_numeric(frame[name], errors="coerce")
    frame = frame.rename(columns={column: "weight"}).dropna(subset=["weight"]).drop_duplicates("instance_id", keep="last")
    final = run.instances("train", epoch=epochs[-1], columns=[c for c in ("instance_id", "label", "student_pred")
                                                              if c in known])
    final = final.apply(pd.to_numeric, errors="coerce").drop_duplicates("instance_id", keep="last")
    final_correct = ((final["student_pred"] == final["label"]).where(final["student_pred"].notna())
                     if "student_pred" in final and "label" in final else pd.Series(np.nan, index=final.index))
    out = pd.DataFrame({"instance_id": frame["instance_id"].astype(int), "epoch": epoch,
                        "weight": frame["weight"].astype(float)})
    teacher = frame.get("teacher_pred")
    out["teacher_correct"] = ((teacher == frame["label"]).where(teacher.notna())
                              if teacher is not None and "label" in frame else np.nan)
    out["student_final_correct"] = out["instance_id"].map(dict(zip(final["instance_id"].astype(int), final_correct)))
    out["clean_label"] = (frame["noisy"] == 0).where(frame["noisy"].notna()) if "noisy" in frame else np.nan
    return out.reset_index(drop=True)


def weighting_effect(run: Run, epoch: int | None = None, frame: pd.DataFrame | None = None,
                     column: str = "weight") -> pd.DataFrame:
    """The small table: factor, group, instances, mean_weight, median_weight, auroc (one value per
    factor, on its first row). Factors the run cannot tell (no teacher, no noise column) are left out."""
    from sklearn.metrics import roc_auc_score

    frame = weighting_frame(run, epoch, column) if frame is None else frame
    rows = []
    for factor, (first, second) in FACTORS.items():
        known = frame.dropna(subset=[factor]) if factor in frame else frame.iloc[:0]
        if known.empty:
            continue
        positive = known[factor].astype(bool).to_numpy()
        weights = known["weight"].to_numpy(float)
        auroc = roc_auc_score(positive, weights) if 0 < positive.sum() < len(positive) else np.nan
        for label, mask in ((first, positive), (second, ~positive)):
            part = weights[mask]
            rows.append({"factor": factor, "group": label, "instances": int(mask.sum()),
                         "mean_weight": float(part.mean()) if len(part) else np.nan,
                         "median_weight": float(np.median(part)) if len(part) else np.nan,
                         "auroc": float(auroc) if label == first else np.nan})
    return pd.DataFrame(rows, columns=["factor", "group", "instances", "mean_weight", "median_weight", "auroc"])
