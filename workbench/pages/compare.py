"""Compare: teacher against student within a run, or one run's student against another's —
confusion matrices, per-class accuracy, the instances where they disagree, and the size/accuracy
trade-off over all runs."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import pandas as pd
import streamlit as st

from kd_engine.store import Run, StoreError, open_run
from workbench import components as ui
from workbench.figures import confusion_matrix, image_gallery, per_class_accuracy, tradeoff
from workbench.pages import (bev_views, compare_box_refine, compare_echo, compare_generation, dense_views,
                             harmonization_views, image_text_views, incremental_views, points_views)

COLUMNS = ("instance_id", "label", "teacher_pred", "student_pred", "teacher_conf", "student_conf")
GALLERY = 16


class PairView(NamedTuple):
    """How Compare shows two runs of a task, one against the other: `render(a, b, split)`.
    `split` is False for a view that reads the runs' final metrics rather than one split's rows
    (then no split is chosen and `render` gets None)."""
    render: Callable[[Run, Run, str | None], None]
    split: bool = True


# The Compare views of each task whose runs are not compared by class labels (keyed by the run's
# `task` meta); a new task adds a row here, and classification's views are the fallback.
# Teacher against student within one run:
TEACHER_VS_STUDENT = {
    "dense": dense_views.compare,  # IoU per class and label maps instead of a confusion matrix
    "open_vocab_seg": dense_views.compare,  # the same, teacher = its crop-window reference
    "bev": bev_views.compare,  # AP per class, teacher and student heatmaps of one probe scene
    "points": points_views.compare,  # mIoU/oAcc, teacher and student predictions as 3-D scatters
    "box_refine": compare_box_refine.self_distillation,  # no separate teacher: the run's IoUs
    "image_text": image_text_views.compare,  # zero-shot/R@1, T and S affinity matrices, ranks
    "harmonization": harmonization_views.compare,  # fMSE/PSNR vs the composite, relation pair
    "echo_depth": compare_echo.compare,  # RMSE/abs-rel/mIoU, per-room teacher vs student RMSE
}
# Run against run, used when either run has the task (run A's first):
RUN_VS_RUN = {
    "dense": PairView(lambda a, b, split: dense_views.compare_runs(a, b), split=False),  # IoU, per-image mIoU
    "open_vocab_seg": PairView(lambda a, b, split: dense_views.compare_runs(a, b), split=False),
    "bev": PairView(lambda a, b, split: bev_views.compare_runs(a, b), split=False),  # AP per class, heatmaps
    "points": PairView(lambda a, b, split: points_views.compare_runs(a, b), split=False),  # mIoU/oAcc, 3-D
    "echo_depth": PairView(lambda a, b, split: compare_echo.compare_runs(a, b), split=False),  # per-room RMSE
    "generation": PairView(compare_generation.render),  # edits: judged success, distance, side by side
    "incremental": PairView(incremental_views.compare_runs),  # old/new/H, per digit, per-object disagreements
    "box_refine": PairView(compare_box_refine.render),  # pseudo-box IoU per object, both runs' boxes on one image
    "image_text": PairView(lambda a, b, split: image_text_views.compare_runs(a, b), split=False),  # affinities
    "harmonization": PairView(lambda a, b, split: harmonization_views.compare_runs(a, b), split=False),
}


def eval_splits(run: Run) -> list[str]:
    return [s for s in ("test", "val", "train") if run.instance_epochs(s)]


def last_epoch(run: Run, split: str) -> pd.DataFrame:
    epoch = run.instance_epochs(split)[-1]
    return ui.cached_instances(str(run.run_dir), ui.data_token(run), split, int(epoch), COLUMNS)


def accuracy(frame: pd.DataFrame, col: str) -> float:
    data = frame.dropna(subset=[col])
    return float((data[col] == data["label"]).mean()) if len(data) else float("nan")


def disagreements(run: Run, frame: pd.DataFrame, a: str, b: str, names: list[str], key: str,
                  labels: tuple[str, str] = ("teacher", "student")) -> None:
    diff = frame[frame[a] != frame[b]].dropna(subset=[a, b])
    st.subheader(f"Where they disagree ({len(diff)} of {len(frame)})")
    if diff.empty:
        st.success("They agree on every instance of this split.")
        return
    shown = diff.assign(true=[ui.class_name(names, v) for v in diff["label"]],
                        **{labels[0]: [ui.class_name(names, v) for v in diff[a]],
                           labels[1]: [ui.class_name(names, v) for v in diff[b]]})
    part = diff.head(GALLERY)
    images = ui.cached_images(str(run.run_dir), tuple(int(i) for i in part["instance_id"]))
    rows = [r for _, r in part.iterrows() if int(r["instance_id"]) in images]
    if rows:
        titles = [f"#{int(r['instance_id'])} y={ui.class_name(names, r['label'])} "
                  f"{labels[0][0].upper()}={ui.class_name(names, r[a])} {labels[1][0].upper()}={ui.class_name(names, r[b])}"
                  for r in rows]
        st.plotly_chart(image_gallery([ui.display_image(images[int(r["instance_id"])]) for r in rows], titles,
                                      ncols=8, title=f"first {len(rows)} disagreements"), key=f"{key}_gallery",
                        width="content")
    st.dataframe(shown[["instance_id", "true", labels[0], labels[1]]], hide_index=True, key=f"{key}_table",
                 height=min(400, 38 + 35 * len(shown)))


def teacher_vs_student(run: Run) -> None:
    view = TEACHER_VS_STUDENT.get(run.meta().get("task"))
    if view is not None:
        view(run)
        return
    names = [str(c) for c in run.meta().get("class_names") or []]
    splits = eval_splits(run)
    if not splits:
        st.info("No per-instance predictions recorded yet.")
        return
    split = st.radio("Split", splits, horizontal=True, key="cmp_split")
    frame = last_epoch(run, split)
    has_teacher = frame["teacher_pred"].notna().any()
    cols = st.columns(3)
    cols[0].metric("student accuracy", f"{accuracy(frame, 'student_pred'):.4f}")
    if not has_teacher:
        st.info("This run has no teacher predictions (trained without a teacher): student only.")
        st.plotly_chart(confusion_matrix(frame, "student_pred", class_names=names, title="student"), key="cmp_cm_s")
        return
    cols[1].metric("teacher accuracy", f"{accuracy(frame, 'teacher_pred'):.4f}")
    cols[2].metric("teacher–student agreement", f"{float((frame['teacher_pred'] == frame['student_pred']).mean()):.4f}")
    left, right = st.columns(2)
    left.plotly_chart(confusion_matrix(frame, "teacher_pred", class_names=names, title="teacher"), key="cmp_cm_t")
    right.plotly_chart(confusion_matrix(frame, "student_pred", class_names=names, title="student"), key="cmp_cm_s")
    st.plotly_chart(per_class_accuracy(frame, {"teacher": "teacher_pred", "student": "student_pred"},
                                       class_names=names), key="cmp_pca")
    disagreements(run, frame, "teacher_pred", "student_pred", names, key="cmp_ts")


def run_vs_run(runs: pd.DataFrame) -> None:
    options = runs[~runs["status"].isin(["corrupt"])]["run_id"].tolist()
    if len(options) < 2:
        st.info("Run against run needs at least two readable runs.")
        return
    cols = st.columns(2)
    a_id = cols[0].selectbox("Run A", options, index=0, format_func=ui.run_label(runs), key="cmp_a")
    b_id = cols[1].selectbox("Run B", options, index=1, format_func=ui.run_label(runs), key="cmp_b")
    a, b = open_run(a_id, ui.runs_dir()), open_run(b_id, ui.runs_dir())
    view = next((RUN_VS_RUN[t] for t in (a.meta().get("task"), b.meta().get("task")) if t in RUN_VS_RUN), None)
    if view is not None and not view.split:
        view.render(a, b, None)
        return
    splits = [s for s in eval_splits(a) if s in eval_splits(b)]
    if not splits:
        st.info("The two runs have no split recorded in common.")
        return
    split = st.radio("Split", splits, horizontal=True, key="cmp_rr_split")
    if view is not None:
        view.render(a, b, split)
        return
    fa, fb = last_epoch(a, split), last_epoch(b, split)
    frame = fa[["instance_id", "label", "student_pred"]].merge(
        fb[["instance_id", "student_pred"]], on="instance_id", suffixes=("_a", "_b"))
    if frame.empty:
        st.warning("The runs share no instances on this split (different datasets or split seeds).")
        return
    names = [str(c) for c in a.meta().get("class_names") or []]
    c = st.columns(3)
    c[0].metric("A student accuracy", f"{accuracy(frame, 'student_pred_a'):.4f}")
    c[1].metric("B student accuracy", f"{accuracy(frame, 'student_pred_b'):.4f}")
    c[2].metric("agreement", f"{float((frame['student_pred_a'] == frame['student_pred_b']).mean()):.4f}")
    left, right = st.columns(2)
    left.plotly_chart(confusion_matrix(frame, "student_pred_a", class_names=names, title=f"A: {a_id}"), key="cmp_cm_a")
    right.plotly_chart(confusion_matrix(frame, "student_pred_b", class_names=names, title=f"B: {b_id}"), key="cmp_cm_b")
    st.plotly_chart(per_class_accuracy(frame, {"A": "student_pred_a", "B": "student_pred_b"}, class_names=names),
                    key="cmp_rr_pca")
    disagreements(a, frame, "student_pred_a", "student_pred_b", names, key="cmp_rr", labels=("A", "B"))


def tradeoff_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """A point per finished run's student, and one per distinct teacher."""
    rows, teachers = [], set()
    for run_id in runs[runs["status"] == "finished"]["run_id"]:
        try:
            meta = open_run(run_id, ui.runs_dir()).meta()
        except StoreError:
            continue
        final = meta.get("final_metrics") or {}
        split = "test" if "test/student_acc" in final else "val"
        run_dir = str(ui.runs_dir() / run_id)
        rows.append({"label": meta.get("name") or run_id, "role": "student", "params": meta.get("student_params"),
                     "accuracy": final.get(f"{split}/student_acc"), "model": meta.get("student"),
                     "run_dir": run_dir})
        if meta.get("teacher") and meta.get("teacher_params") and meta.get("teacher") not in teachers:
            teachers.add(meta.get("teacher"))
            rows.append({"label": meta.get("teacher"), "role": "teacher", "params": meta.get("teacher_params"),
                         "accuracy": final.get(f"{split}/teacher_acc"), "model": meta.get("teacher"),
                         "run_dir": run_dir})
    return pd.DataFrame(rows, columns=["label", "role", "params", "accuracy", "model", "run_dir"])


def checkpoint_stamp(run_dir: str, role: str) -> str:
    path = Path(run_dir) / "checkpoints" / f"{role}.safetensors"
    return str(path.stat().st_mtime_ns) if path.is_file() else "-"


@st.cache_data(show_spinner="Timing the models on this CPU…", max_entries=64)
def latency(run_dir: str, role: str, version: str) -> float | None:
    """Milliseconds per instance of a role's checkpoint; None when the run has no checkpoint."""
    from kd_engine.errors import KDWError
    from kd_engine.inspection import RunInspector

    try:
        return RunInspector(run_dir).latency_ms(role)
    except (KDWError, StoreError):
        return None


@st.cache_data(show_spinner="Counting the models' FLOPs…", max_entries=64)
def flops(run_dir: str, role: str, version: str) -> float | None:
    """Forward FLOPs per instance of a role's checkpoint; None when the run has no checkpoint."""
    from kd_engine.errors import KDWError
    from kd_engine.inspection import RunInspector

    try:
        return float(RunInspector(run_dir).flops(role))
    except (KDWError, StoreError):
        return None


AXES = ("parameters", "FLOPs (forward, per instance)", "latency (CPU ms per instance)")


def tradeoff_section(runs: pd.DataFrame) -> None:
    st.subheader("Accuracy against size and speed")
    points = tradeoff_frame(runs)
    if points.dropna(subset=["params", "accuracy"]).empty:
        st.info("No finished run with final metrics yet.")
        return
    axis = st.radio("x axis", AXES, horizontal=True, key="cmp_axis",
                    help="FLOPs and latency load each run's checkpoints and count (FlopCounterMode) or "
                         "time a forward pass here, once")
    if axis == AXES[0]:
        fig = tradeoff(points, x="params", y="accuracy", title="accuracy vs parameters (finished runs)")
    elif axis == AXES[1]:
        points["flops"] = [flops(d, r, checkpoint_stamp(d, r)) for d, r in zip(points["run_dir"], points["role"])]
        fig = tradeoff(points.rename(columns={"flops": "forward FLOPs"}), x="forward FLOPs", y="accuracy",
                       title="accuracy vs forward FLOPs per instance (finished runs)")
    else:
        points["latency_ms"] = [latency(d, r, checkpoint_stamp(d, r)) for d, r in zip(points["run_dir"], points["role"])]
        fig = tradeoff(points.rename(columns={"latency_ms": "latency (ms)"}), x="latency (ms)", y="accuracy",
                       title="accuracy vs CPU latency per instance (finished runs)")
    st.plotly_chart(fig, key="cmp_tradeoff")


def main() -> None:
    st.title("Compare")
    runs = ui.load_runs()
    if runs.empty:
        ui.empty_message()
        return
    mode = st.radio("Compare", ["Teacher vs student", "Run vs run"], horizontal=True, key="cmp_mode")
    if mode == "Teacher vs student":
        run = ui.open_selected(runs)
        if run is None:
            return
        ui.run_banner(run)
        teacher_vs_student(run)
    else:
        run_vs_run(runs)
    tradeoff_section(runs)


if __name__ == "__main__":
    ui.guard(main)
