"""Features and Compare views for class-incremental runs (meta `task: incremental`, WCBC-IOD).

Features: the class structure itself, the teacher's and student's feature distance matrices
between digit means (the artifact saved at the last test pass) and their correlation over the
old classes. Compare, run against run: old / new / harmonic accuracy side by side, accuracy per
digit, and the objects (image, cell) where the two students disagree. Rows are per object, so
two runs are matched on (instance_id, cell), never on the image alone.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from kd_engine.store import Run
from workbench import components as ui
from workbench.pages.instances_incremental import distances_section, per_digit

SUMMARY = ("old_acc", "new_acc", "harmonic", "df_corr", "ds_corr")


def features(run: Run) -> None:
    st.subheader("Class structure: teacher and student")
    final = run.final_metrics()
    shown = [(k, final[f"test/student_{k}"]) for k in ("df_corr", "ds_corr") if f"test/student_{k}" in final]
    for col, (name, value) in zip(st.columns(max(len(shown), 1)), shown):
        col.metric(f"old-class {name.split('_')[0].upper()} correlation", f"{value:.3f}")
    st.caption("Pearson r between the teacher's and the student's old-class distance matrices on the test "
               "objects: D_f between class-mean features, D_s (Jensen–Shannon) between class-mean soft "
               "predictions over the teacher's known outputs.")
    distances_section(run, "test")


def summary_table(a: Run, b: Run) -> pd.DataFrame:
    rows = []
    for label, run in (("A", a), ("B", b)):
        final = run.final_metrics()
        rows.append({"run": f"{label}: {run.run_id}", **{k: final.get(f"test/student_{k}") for k in SUMMARY}})
    return pd.DataFrame(rows)


def compare_runs(a: Run, b: Run, split: str) -> None:
    st.subheader("Old and new classes (test)")
    st.dataframe(summary_table(a, b), hide_index=True, key="inc_cmp_summary")
    frames = []
    for run in (a, b):
        epoch = run.instance_epochs(split)[-1]
        frames.append(ui.cached_instances(str(run.run_dir), ui.data_token(run), split, int(epoch),
                                          ("instance_id", "cell", "digit", "student_pred")))
    merged = frames[0].merge(frames[1], on=["instance_id", "cell", "digit"], suffixes=("_a", "_b"))
    if merged.empty:
        st.warning("The runs share no objects on this split (different datasets or split seeds).")
        return
    by_digit = per_digit(frames[0])[["digit", "cells"]]
    for label, frame in (("A", frames[0]), ("B", frames[1])):
        by_digit[f"{label} accuracy"] = per_digit(frame)["student accuracy"].to_numpy()
    st.dataframe(by_digit, hide_index=True, key="inc_cmp_digits")
    differ = merged[merged["student_pred_a"] != merged["student_pred_b"]]
    st.subheader(f"Objects where they disagree ({len(differ)} of {len(merged)})")
    st.dataframe(differ.head(2000), hide_index=True, key="inc_cmp_differ")
