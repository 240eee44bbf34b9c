"""Attention: where teacher and student look, for one instance, side by side.

Recorded spatial-attention maps come from the run's artifacts; Grad-CAM, Saliency, Integrated
Gradients and ViT attention are computed from the stored checkpoints by `kd_engine.inspection`,
cached per checkpoint version so a rerun never recomputes them.
"""
from __future__ import annotations

import numpy as np
import streamlit as st

from kd_engine import inspection as kinspect
from kd_engine.store import Run
from workbench import components as ui
from workbench.figures import map_panels
from workbench.pages import instances_echo

METHOD_LABELS = {"gradcam": "Grad-CAM (LayerGradCam, upsampled)", "saliency": "Saliency",
                 "integrated_gradients": "Integrated Gradients", "vit_attention": "ViT attention (last layer)",
                 "vit_rollout": "ViT attention rollout"}


def stamp(run: Run) -> str:
    """Checkpoint versions: a new epoch's checkpoint invalidates the cached models and maps."""
    paths = [run.checkpoint_path(w) for w in ("teacher", "student")]
    return ":".join(f"{p.stat().st_mtime_ns}" if p else "-" for p in paths)


@st.cache_resource(show_spinner="Loading the models from their checkpoints…", max_entries=8)
def inspector(run_dir: str, version: str) -> kinspect.RunInspector:
    return kinspect.RunInspector(run_dir)


@st.cache_data(show_spinner=False, max_entries=16)
def describe(run_dir: str, version: str, which: str) -> dict:
    return kinspect.describe(inspector(run_dir, version), which)


@st.cache_data(show_spinner="Computing attributions…", max_entries=256)
def attribution_map(run_dir: str, version: str, which: str, method: str, iid: int, target: int,
                    layer: str | None) -> np.ndarray:
    return inspector(run_dir, version).attribution(which, method, [iid], [target], layer)[0]


@st.cache_data(show_spinner=False, max_entries=256)
def predictions(run_dir: str, version: str, iid: int, roles: tuple[str, ...]) -> dict[str, int]:
    ins = inspector(run_dir, version)
    return {role: int(ins.predict(role, [iid])[0]) for role in roles}


def show_pair(run: Run, iid: int, teacher: np.ndarray | None, student: np.ndarray | None,
              title: str, key: str) -> None:
    panels = {}
    image = ui.cached_images(str(run.run_dir), (iid,)).get(iid)
    if image is not None:
        panels["input"] = ui.display_image(image)
    t = kinspect.normalise_map(teacher) if teacher is not None else None
    s = kinspect.normalise_map(kinspect.resize_map(student, teacher.shape)) if (
        student is not None and teacher is not None) else (
        kinspect.normalise_map(student) if student is not None else None)
    if t is not None:
        panels["teacher"] = t
    if s is not None:
        panels["student"] = s
    if t is not None and s is not None:
        panels["difference"] = t - s
    st.plotly_chart(map_panels(panels, title=title), key=key)
    if t is not None and s is not None:
        score = kinspect.agreement(t, s)
        a, b = st.columns(2)
        a.metric("Agreement (Pearson)", f"{score['pearson']:.3f}")
        b.metric("Agreement (cosine)", f"{score['cosine']:.3f}")


def recorded_section(run: Run, iid: int, index) -> None:
    st.subheader("Recorded attention maps")
    rows = index[index["ids"].map(lambda ids: iid in ids)]
    if rows.empty:
        st.info("No attention map was recorded for this instance (maps are stored for the first "
                "`record.attention_maps` validation instances of runs with feature pairs).")
        return
    cols = st.columns(2)
    layers = sorted(set(rows["layer"]), key=list(dict.fromkeys(rows["layer"])).index)
    layer = cols[0].selectbox("Layer", layers, index=len(layers) - 1 if len(layers) < 3 else 1, key="att_layer")
    epochs = sorted(int(e) for e in rows[rows["layer"] == layer]["epoch"].dropna().unique())
    epoch = cols[1].select_slider("Epoch", epochs, value=epochs[-1], key="att_epoch") if len(epochs) > 1 else epochs[0]
    maps = {}
    for role in ("teacher", "student"):
        pick = rows[(rows["role"] == role) & (rows["layer"] == layer) & (rows["epoch"] == epoch)]
        if len(pick):
            row = pick.iloc[0]
            maps[role] = ui.cached_artifact(str(run.run_dir), row["name"])[list(row["ids"]).index(iid)]
    show_pair(run, iid, maps.get("teacher"), maps.get("student"),
              f"spatial attention at {layer}, epoch {epoch} (normalised)", key="att_recorded")


def computed_section(run: Run, iid: int, label: int, names: list[str]) -> None:
    st.subheader("Attributions from the checkpoints")
    roles = tuple(r for r in ("teacher", "student") if run.checkpoint_path(r) is not None)
    reasons = {r: kinspect.unavailable_reason(run, r) for r in roles}
    for role, reason in reasons.items():
        if reason:
            st.info(f"On-demand attributions are unavailable for the {role}: {reason}. The maps this run "
                    "recorded for its probe instances during training are shown above.")
    if not roles:
        st.info("No checkpoint yet: the student's is written after its first epoch.")
        return
    roles = tuple(r for r in roles if not reasons[r])
    if not roles:
        return
    version = stamp(run)
    info = {role: describe(str(run.run_dir), version, role) for role in roles}
    methods = ["gradcam", "saliency", "integrated_gradients"]
    if any(info[r]["is_vit"] for r in roles):
        methods += ["vit_attention", "vit_rollout"]
    cols = st.columns([2, 2, 3])
    method = cols[0].radio("Method", methods, format_func=METHOD_LABELS.get, key="att_method")
    preds = predictions(str(run.run_dir), version, iid, roles)
    targets = {"true label": label, **{f"{r} prediction": p for r, p in preds.items()}}
    target_name = cols[1].radio("Explain the class", list(targets), key="att_target",
                                format_func=lambda k: f"{k}: {ui.class_name(names, targets[k])}")
    layers = {}
    if method == "gradcam":
        with cols[2]:
            for role in roles:
                options = info[role]["layers"]
                if not options:
                    st.info(f"The {role} has no spatial layer for Grad-CAM.")
                    continue
                layers[role] = st.selectbox(f"{role} layer", options, index=max(0, len(options) - 2),
                                            key=f"att_gc_{role}")
    st.caption(" · ".join(f"{role}: {info[role]['model']}, {info[role]['params']:,} parameters, "
                          f"predicts {ui.class_name(names, preds[role])}" for role in roles))
    maps = {}
    for role in roles:
        if method == "gradcam" and role not in layers:
            continue
        if method.startswith("vit") and not info[role]["is_vit"]:
            st.caption(f"The {role} is not a ViT: it has no attention map.")
            continue
        maps[role] = attribution_map(str(run.run_dir), version, role, method, iid, int(targets[target_name]),
                                     layers.get(role))
    if "teacher" not in roles and not reasons.get("teacher"):
        st.info("This run has no teacher checkpoint: only the student is shown.")
    show_pair(run, iid, maps.get("teacher"), maps.get("student"),
              f"{METHOD_LABELS[method]} for class {ui.class_name(names, targets[target_name])}",
              key="att_computed")


def main() -> None:
    st.title("Attention")
    run = ui.open_selected(ui.load_runs())
    if run is None:
        return
    ui.run_banner(run)
    if run.meta().get("task") == "echo_depth":  # echo inputs: the query aligners' cross-attention instead
        instances_echo.attention(run)
        return
    names = [str(c) for c in run.meta().get("class_names") or []]
    index = ui.artifact_index(run, "attention_map")
    recorded = sorted({i for ids in index["ids"] for i in ids}) if not index.empty else []
    options = recorded
    split = "val" if run.instance_epochs("val") else "train"
    epochs = run.instance_epochs(split)
    if not options and epochs:
        frame = ui.cached_instances(str(run.run_dir), ui.data_token(run), split, epochs[-1], ("instance_id",))
        options = frame["instance_id"].head(200).astype(int).tolist()
    if not options:
        st.info("No instances recorded yet.")
        return
    cols = st.columns([2, 1])
    iid = int(cols[0].selectbox("Instance", options, key="att_instance",
                                help="instances with recorded attention maps (the validation probe)"))
    other = cols[1].text_input("…or any instance id", key="att_other")
    if other.strip():
        if not other.strip().lstrip("-").isdigit():
            st.error("An instance id is an integer.")
            return
        iid = int(other)
    labels = ui.cached_instances(str(run.run_dir), ui.data_token(run), None, None,
                                 ("instance_id", "label"), (iid,))
    if labels.empty:
        st.warning(f"Instance {iid} is not in this run's records.")
        return
    label = int(labels["label"].iloc[0])
    st.caption(f"instance {iid} · class {ui.class_name(names, label)}")
    if not index.empty:
        recorded_section(run, iid, index)
    computed_section(run, iid, label, names)


if __name__ == "__main__":
    ui.guard(main)
