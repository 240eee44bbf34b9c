"""Roles: which network holds which role over training, for group runs (ORC-style online role
change records ``role/<member>`` per step; the ORC mechanism is a reconstruction, paper 27)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from kd_engine.store import open_run
from workbench import components as ui
from workbench.figures.roles import member_curves, role_members, role_share, role_timeline


def group_runs(runs: pd.DataFrame) -> list[str]:
    """Runs (not corrupt) that recorded role scalars."""
    found = []
    for run_id in runs[runs["status"] != "corrupt"]["run_id"]:
        try:
            if any(k.startswith("role/") for k in open_run(run_id, ui.runs_dir()).scalar_keys()):
                found.append(run_id)
        except Exception:  # noqa: BLE001 - an unreadable run is shown on the Runs page
            continue
    return found


def main() -> None:
    st.title("Roles")
    runs = ui.load_runs()
    if runs.empty:
        ui.empty_message()
        return
    options = group_runs(runs)
    if not options:
        st.info("No run here records roles: only group trainers (e.g. method `orc`, "
                "`kdw train configs/orc_digits.yaml`) log `role/<member>` per step.")
        return
    current = st.session_state.get(ui.RUN_KEY)
    run_id = st.sidebar.selectbox("Group run", options, index=options.index(current) if current in options else 0,
                                  format_func=ui.run_label(runs), key="roles_run")
    st.session_state[ui.RUN_KEY] = run_id
    run = open_run(run_id, ui.runs_dir())
    ui.run_banner(run)
    roles = run.scalars(keys=[k for k in run.scalar_keys() if k.startswith("role/")])
    members = role_members(roles)
    reported = run.meta().get("reported_student")
    st.caption(f"Members: {', '.join(members)}. 1 = in the teacher group that step (its outputs are a "
               "distillation target), 0 = in the student group. The ORC promotion rule is a "
               "reconstruction (paper 27)." + (f" Reported student (best validation accuracy): **{reported}**."
                                               if reported else ""))
    st.plotly_chart(role_timeline(roles, title="role timeline (reconstruction): teacher group per step"),
                    key="roles_timeline")
    left, right = st.columns(2)
    left.plotly_chart(role_share(roles), key="roles_share")
    curves = run.scalars(keys=[k for k in run.scalar_keys() if k.startswith("val/member/")])
    if curves.empty:
        right.info("No per-member validation accuracy recorded yet.")
    else:
        right.plotly_chart(member_curves(curves), key="roles_members")
    per_epoch = roles.assign(member=roles["key"].str.slice(len("role/"))).pivot_table(
        index="epoch", columns="member", values="value", aggfunc="mean")[members]
    st.subheader("Share of each epoch's steps in the teacher group")
    st.dataframe(per_epoch.round(3))


if __name__ == "__main__":
    ui.guard(main)
