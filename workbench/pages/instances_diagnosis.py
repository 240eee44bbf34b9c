"""Instances page, diagnosis part: the teacher's mistakes the student copied (against a scratch
control) and what the weighting did (weights against correctness and label noise)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from kd_engine.diagnosis import adoption, copied_mistakes, find_control, weighting_effect, weighting_frame
from kd_engine.diagnosis.figures import adoption_curves, weight_by_group
from kd_engine.diagnosis.mistakes import is_control_for
from kd_engine.diagnosis.weighting import FACTORS
from kd_engine.errors import KDWError
from kd_engine.store import Run, StoreError, open_run
from workbench import components as ui
from workbench.figures import image_gallery

NO_CONTROL = "(none)"


def _control(run: Run) -> Run | None:
    """A scratch run of the same data and seed: the user's pick, by default the newest one."""
    candidates = []
    for row in ui.load_runs().itertuples():
        try:
            if row.status != "corrupt" and is_control_for(Run(row.path), run):
                candidates.append(row.run_id)
        except StoreError:
            continue
    if not candidates:
        st.caption("No scratch run of the same data and seed under this runs directory, so there is no "
                   "control: train one (method: scratch, same data and seed) to see chance overlap.")
        return None
    default = find_control(run, ui.runs_dir())
    options = candidates + [NO_CONTROL]
    index = options.index(default.run_id) if default is not None and default.run_id in options else 0
    choice = st.selectbox("Scratch control", options, index=index, key="diag_control",
                          help="a student trained without the teacher on the same data and seed: its "
                               "overlap with the teacher's mistakes is coincidence")
    return None if choice == NO_CONTROL else open_run(choice, ui.runs_dir())


def copied_section(run: Run, names: list[str]) -> None:
    splits = [s for s in ("val", "train", "test") if run.instance_epochs(s)]
    left, right = st.columns([1, 3])
    split = left.radio("Split", splits, horizontal=True, key="diag_split")
    with right:
        control = _control(run)
    try:
        table = adoption(run, split, control)
        ranked = copied_mistakes(run, split)
    except KDWError as exc:
        st.info(str(exc))
        return
    if table.empty:
        st.info("The teacher makes no mistake on this split: there is nothing to copy.")
        return
    last = table.iloc[-1]
    cols = st.columns(3)
    cols[0].metric("teacher mistakes", int(last["teacher_mistakes"]))
    cols[1].metric("adopted by the student", f"{int(last['adopted'])} ({last['adopted_share']:.0%})")
    cols[2].metric("made by the scratch control", "–" if pd.isna(last["control_adopted"]) else
                   f"{int(last['control_adopted'])} ({last['control_share']:.0%})")
    st.plotly_chart(adoption_curves({"distilled student": table}), key="diag_adoption")
    if ranked.empty:
        st.caption("At the last epoch the student repeats none of the teacher's mistakes.")
        return
    k = st.slider("Copied mistakes shown", 4, 24, 8, key="diag_copied_k")
    shown = ranked.head(k)
    images = ui.cached_images(str(run.run_dir), tuple(int(i) for i in shown["instance_id"]))
    rows = [r for r in shown.itertuples() if int(r.instance_id) in images]
    if rows:
        titles = [f"#{int(r.instance_id)} y={ui.class_name(names, r.label)}<br>T→{ui.class_name(names, r.teacher_pred)} "
                  f"S→{ui.class_name(names, r.student_pred)}" for r in rows]
        st.plotly_chart(image_gallery([ui.display_image(images[int(r.instance_id)]) for r in rows], titles,
                                      ncols=min(8, len(rows)), title="Copied mistakes: y label, T→ teacher, S→ student"),
                        key="diag_copied_gallery", width="content")
    st.dataframe(ranked, hide_index=True, key="diag_copied_table")


def weighting_section(run: Run, decisions: list[str]) -> None:
    decisions = [d for d in decisions if d != "noisy"]  # a property of the data, not a decision
    column = st.selectbox("Per-instance weight or decision", ["weight", *decisions], key="diag_weight_column",
                          help="the weight the loss used, or a method's own per-instance choice "
                               "(a selected flag, a gate value), on the last training epoch") if decisions else "weight"
    frame = weighting_frame(run, column=column)
    if frame.empty or frame["weight"].nunique() <= 1:
        st.caption(f"No {column} recorded on training instances, or the same value everywhere "
                   "(uniform weighting).")
        return
    st.dataframe(weighting_effect(run, frame=frame), hide_index=True, key="diag_weighting_table",
                 column_config={"auroc": st.column_config.NumberColumn(
                     "auroc", help="how well the weight tells the first group from the second (0.5: not at all)",
                     format="%.3f")})
    factors = [(f, labels) for f, labels in FACTORS.items() if frame[f].notna().any()]
    for col, (factor, labels) in zip(st.columns(max(1, len(factors))), factors):
        col.plotly_chart(weight_by_group(frame, factor, labels), key=f"diag_weight_{factor}")


def render(run: Run, names: list[str], decisions: list[str] = ()) -> None:
    """`decisions`: the method's own per-instance columns, analysed like the weight."""
    with st.container(key="copied_mistakes"):
        st.subheader("Copied mistakes: the teacher's errors the student repeats")
        copied_section(run, names)
    st.subheader("What the weighting did")
    weighting_section(run, list(decisions))
