"""Copied mistakes: where the teacher is wrong and the student makes the *same* wrong prediction.

A student that agrees with a wrong teacher may have learnt the mistake from it, or may have made
it on its own (some images are hard for every model). The control separates the two: a student
trained from scratch on the same data and seed never saw the teacher, so its overlap with the
teacher's mistakes is what agreement by coincidence looks like. Adoption above the control is what
distillation passed on.

Records used: per-instance rows of one split (validation by default: both models are evaluated on
it every epoch) with `label`, `teacher_pred`, `student_pred` (and the confidences).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kd_engine.errors import DataError
from kd_engine.store import Run, StoreError, list_runs

COLUMNS = ["epoch", "instance_id", "label", "teacher_pred", "student_pred", "teacher_conf", "student_conf"]


def _records(run: Run, split: str, epoch: int | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    known = set(run.instance_columns())
    frame = run.instances(split, epoch=epoch, columns=[c for c in (columns or COLUMNS) if c in known])
    for column in frame.columns:  # all-NULL columns (no teacher) come back as objects
        if frame[column].dtype == object:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def _teacher_frame(run: Run, split: str, epoch: int | None = None) -> pd.DataFrame:
    frame = _records(run, split, epoch)
    if "teacher_pred" not in frame or frame["teacher_pred"].isna().all():
        raise DataError(f"{run.run_id}: no teacher predictions on split {split!r} (a run without a teacher?)")
    return frame.dropna(subset=["teacher_pred", "student_pred", "label"])


def copied_mistakes(run: Run, split: str = "val", epoch: int | None = None) -> pd.DataFrame:
    """The instances the student got wrong the teacher's way at `epoch` (default: the last),
    ranked by how many epochs the student copied the mistake, then by the student's confidence.

    Columns: instance_id, label, teacher_pred, student_pred, teacher_conf, student_conf,
    epochs_copied (of the epochs recorded on this split)."""
    frame = _teacher_frame(run, split)
    if frame.empty:
        return pd.DataFrame(columns=COLUMNS[1:] + ["epochs_copied"])
    copied = frame[(frame["teacher_pred"] != frame["label"]) & (frame["student_pred"] == frame["teacher_pred"])]
    epoch = int(frame["epoch"].max()) if epoch is None else int(epoch)
    counts = copied.groupby("instance_id").size().rename("epochs_copied")
    now = copied[copied["epoch"] == epoch].drop(columns=["epoch"]).join(counts, on="instance_id")
    return now.sort_values(["epochs_copied", "student_conf", "instance_id"],
                           ascending=[False, False, True]).reset_index(drop=True)


def adoption(run: Run, split: str = "val", control: Run | None = None) -> pd.DataFrame:
    """Per epoch: the teacher's mistakes, how many of them the student adopted (same wrong class),
    and, with a `control` run (a scratch student), how many the control student made too.

    Columns: epoch, teacher_mistakes, adopted, adopted_share, control_adopted, control_share
    (the control columns are NaN without a control or where it has no record of that epoch)."""
    frame = _teacher_frame(run, split)
    wrong = frame[frame["teacher_pred"] != frame["label"]]
    table = wrong.groupby("epoch").agg(teacher_mistakes=("instance_id", "size"))
    table["adopted"] = (wrong["student_pred"] == wrong["teacher_pred"]).groupby(wrong["epoch"]).sum()
    table["control_adopted"] = np.nan
    if control is not None:
        other = _records(control, split, columns=["epoch", "instance_id", "student_pred"]).dropna()
        both = wrong.merge(other, on=["epoch", "instance_id"], suffixes=("", "_control"))
        if len(both):
            same = both["student_pred_control"] == both["teacher_pred"]
            table["control_adopted"] = same.groupby(both["epoch"]).sum().astype(float)
            covered = both.groupby("epoch").size()
            table.loc[~table.index.isin(covered.index), "control_adopted"] = np.nan
    table["adopted_share"] = table["adopted"] / table["teacher_mistakes"]
    table["control_share"] = table["control_adopted"] / table["teacher_mistakes"]
    table = table.reset_index()
    return table[["epoch", "teacher_mistakes", "adopted", "adopted_share", "control_adopted", "control_share"]]


def _data_identity(config: dict) -> tuple:
    """What makes two runs see the same instances in the same splits."""
    data = dict(config.get("data") or {})
    split_seed = data.get("split_seed")
    return (data.get("name"), data.get("root"), split_seed if split_seed is not None else config.get("seed"),
            data.get("val_fraction"), data.get("test_fraction"), data.get("image_size"),
            repr(sorted((data.get("params") or {}).items())))


def is_control_for(candidate: Run, run: Run) -> bool:
    """A scratch run (no teacher) of the same data, split and seed as `run`."""
    config, other = run.config(), candidate.config()
    return (candidate.run_dir != run.run_dir and not other.get("teacher")
            and _data_identity(other) == _data_identity(config) and other.get("seed") == config.get("seed"))


def find_control(run: Run, runs_dir: str | Path | None = None) -> Run | None:
    """The newest finished scratch run of the same data and seed under `runs_dir` (default: the
    run's own runs directory), preferring one with the same student; None when there is none."""
    base = Path(runs_dir) if runs_dir is not None else run.run_dir.parent
    student = (run.config().get("student") or {})
    best: tuple[int, int, float] | None = None
    found = None
    for row in list_runs(base).itertuples():
        if row.status not in ("finished", "running", "stopped"):
            continue
        try:
            candidate = Run(row.path)
            if not is_control_for(candidate, run):
                continue
        except StoreError:
            continue
        rank = (int(row.status == "finished"), int(candidate.config().get("student") == student),
                float(row.created or 0))
        if best is None or rank > best:
            best, found = rank, candidate
    return found
