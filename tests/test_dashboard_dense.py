"""The Instances, Features and Compare pages on dense-prediction runs (meta `task: dense`),
rendered with AppTest against stores whose rows and maps come from the `DenseTask` itself (its
training rows, evaluations and probe artifacts, written with `RunWriter`); and the dense figure
functions."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from streamlit.testing.v1 import AppTest

import workbench.figures as figures
from conftest_dashboard import REPO, build_run, chart_specs, open_page
from kd_engine.store import RunWriter, open_run
from test_dense_task import config, setup
from workbench.figures import dense as D

DENSE_A, DENSE_B, CLS_RUN = ("20260301-000100-dense-aaaa", "20260301-000200-dense-bbbb",
                             "20260301-000050-cls-cccc")
EPOCHS = 2


def record_dense_run(runs_dir: Path, run_id: str, seed: int) -> Path:
    """Two epochs of the dense task: training rows, validation rows, final test rows and maps."""
    cfg = config(seed=seed)
    task, data, distiller = setup(cfg)
    meta = {"task": "dense", "method": "standard", "dataset": "digit_scenes", "class_names": data.class_names,
            "input_shape": list(data.input_shape), "student": "fcn(width=2)", "teacher": "fcn(width=4)",
            "epochs": EPOCHS, **task.run_meta(distiller)}
    writer = RunWriter.create(runs_dir, "dense", meta, yaml.safe_dump(cfg.to_dict()), run_id=run_id, tensorboard=False)
    task.save_inputs(writer)
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.05)
    step = 0
    for epoch in range(EPOCHS):
        rows = []
        for batch in task.batches(epoch):
            out = distiller(*batch.inputs, **batch.kwargs)
            optimizer.zero_grad()
            out.total.backward()
            optimizer.step()
            rows.append(task.train_rows(out, batch, step, epoch))
            step += 1
        merged = task.merge_rows(rows)
        writer.log_instances({"split": np.full(len(merged["instance_id"]), "train"), **merged})
        for split, final in (("val", False),) + ((("test", True),) if epoch == EPOCHS - 1 else ()):
            ev = task.evaluate(split, distiller.student, distiller.teacher, final=final)
            n = len(ev.columns["instance_id"])
            writer.log_instances({"split": np.full(n, split), "epoch": np.full(n, epoch), "step": np.full(n, step),
                                  **ev.columns})
            writer.log_scalars(step, epoch, ev.metrics)
            for a in ev.artifacts:
                writer.save_artifact(a.name, a.array, kind=a.kind, dtype=a.dtype, role=a.role, epoch=a.epoch,
                                     meta=a.meta)
            if final:
                writer.set_meta(final_metrics=ev.metrics)
        writer.flush()
    writer.set_status("finished")
    writer.close()
    return writer.run_dir


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("runs_dense")
    record_dense_run(base, DENSE_A, seed=3)
    record_dense_run(base, DENSE_B, seed=4)
    build_run(base, CLS_RUN, checkpoints=False, epochs=1)
    return base






def titled(at: AppTest, text: str) -> dict:
    found = [f for f in chart_specs(at) if text in (f["layout"].get("title") or {}).get("text", "")]
    assert found, (text, [(f["layout"].get("title") or {}).get("text") for f in chart_specs(at)])
    return found[0]


def panels(fig: dict) -> dict[str, np.ndarray]:
    """Panel name -> the map it draws (rows flipped back to image order)."""
    names = [a["text"] for a in fig["layout"]["annotations"]]
    return {name: np.asarray(trace["z"], dtype=float)[::-1] for name, trace in zip(names, fig["data"])}


def stored(run_dir: Path, what: str) -> tuple[np.ndarray, list[int]]:
    run = open_run(run_dir)
    meta = json.loads(run.artifacts("dense_map").set_index("name").loc[f"dense/test/{what}", "meta"])
    return run.load_artifact(f"dense/test/{what}"), meta["instance_ids"]


def test_instances_page_shows_rows_and_the_probe_maps(dense_dir, monkeypatch):
    at = open_page(dense_dir, DENSE_A, "instances", monkeypatch, errors=True)
    run = open_run(dense_dir / DENSE_A)
    rows = run.instances("train", epoch=EPOCHS - 1)
    assert len(rows) == 24 and rows["instance_id"].is_unique
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["mean weight"]) == pytest.approx(rows["weight"].mean(), abs=1e-4)
    assert float(metrics["disagreement"]) == pytest.approx(rows["disagreement"].mean(), abs=1e-4)
    hist = titled(at, f"weight at epoch {EPOCHS - 1}")
    assert sorted(hist["data"][0]["x"]) == pytest.approx(sorted(rows["weight"]))
    disparity, ids = stored(dense_dir / DENSE_A, "disparity")
    worst = ids[int(np.argmax(disparity.reshape(len(ids), -1).mean(1)))]
    assert at.selectbox(key="dense_inst_image").value == worst  # highest disparity first
    fig = titled(at, f"image {worst}: true, teacher and student maps")
    shown, k = panels(fig), ids.index(worst)
    assert list(shown) == ["image", "true", "teacher", "student", "disparity", "true_depth", "teacher_depth",
                           "student_depth"]
    for name, what in (("true", "true_mask"), ("teacher", "teacher_mask"), ("student", "student_mask"),
                       ("disparity", "disparity"), ("student_depth", "student_depth")):
        assert shown[name] == pytest.approx(stored(dense_dir / DENSE_A, what)[0][k].astype(float), abs=1e-3), name
    image = run.images([worst])[worst]
    assert shown["image"] == pytest.approx(image, abs=1e-3)
    other = [i for i in ids if i != worst][0]
    at.selectbox(key="dense_inst_image").set_value(other).run()
    assert panels(titled(at, f"image {other}:"))["student"] == pytest.approx(
        stored(dense_dir / DENSE_A, "student_mask")[0][ids.index(other)].astype(float))
    assert len(at.dataframe[0].value) == 24


def test_features_page_shows_disparity_curve_and_maps(dense_dir, monkeypatch):
    at = open_page(dense_dir, DENSE_A, "features", monkeypatch, errors=True)
    val = open_run(dense_dir / DENSE_A).instances("val")
    curve = titled(at, "mean per-pixel disparity (val)")
    assert curve["data"][-1]["y"] == pytest.approx(val.groupby("epoch")["disparity"].mean().tolist())
    assert "disparity" in panels(titled(at, "true, teacher and student maps"))


def test_compare_page_teacher_vs_student_and_run_vs_run(dense_dir, monkeypatch):
    at = open_page(dense_dir, DENSE_A, "compare", monkeypatch, errors=True)
    final = open_run(dense_dir / DENSE_A).final_metrics()
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["student mIoU"]) == pytest.approx(final["test/student_mIoU"], abs=1e-4)
    bars = {t["name"]: dict(zip(t["x"], t["y"])) for t in titled(at, "IoU per class (test)")["data"]}
    for role in ("teacher", "student"):
        assert bars[role] == pytest.approx({k.split("_IoU_")[1]: v for k, v in final.items()
                                            if k.startswith(f"test/{role}_IoU_")})
    test = open_run(dense_dir / DENSE_A).instances("test")
    scatter = titled(at, "per-image mIoU, teacher vs student")["data"][0]
    assert sorted(scatter["y"]) == pytest.approx(sorted(test["student_miou"]))
    at.radio(key="cmp_mode").set_value("Run vs run").run()
    assert not at.exception
    at.selectbox(key="cmp_a").set_value(DENSE_A).run()
    at.selectbox(key="cmp_b").set_value(DENSE_B).run()
    assert not at.exception and not at.error
    final_b = open_run(dense_dir / DENSE_B).final_metrics()
    bars = {t["name"]: dict(zip(t["x"], t["y"])) for t in titled(at, "student IoU per class")["data"]}
    assert bars["B"] == pytest.approx({k.split("_IoU_")[1]: v for k, v in final_b.items()
                                       if k.startswith("test/student_IoU_")})


def test_classification_pages_do_not_take_the_dense_views(dense_dir, monkeypatch):
    at = open_page(dense_dir, CLS_RUN, "instances", monkeypatch, errors=True)
    assert titled(at, "weights at epoch 0")
    assert not [s for s in at.selectbox if s.key == "dense_inst_image"]


def test_dense_figures():
    for name in D.__all__:
        assert getattr(figures, name) is getattr(D, name)
    scale = D.class_colorscale(3)
    assert scale[0][1] == scale[1][1] == D._BACKGROUND and scale[2][0] == pytest.approx(1 / 3)
    mask = np.array([[0, 1], [2, 2]])
    fig = D.dense_panels({"true": mask, "disparity": np.array([[0.0, 0.5], [1.0, 2.0]])}, ["bg", "a", "b"])
    assert np.array_equal(np.asarray(fig.data[0].z)[::-1], mask)
    assert list(fig.data[0].text[0]) == ["b", "b"] and fig.data[1].zmax == 2.0
    frame = D.iou_frame({"test/student_IoU_a": 0.5, "test/teacher_IoU_a": 0.9, "val/student_IoU_b": 0.1},
                        "test", ["teacher", "student"], ["bg", "a", "b"])
    assert frame.to_dict("records") == [{"role": "teacher", "class": "a", "IoU": 0.9},
                                        {"role": "student", "class": "a", "IoU": 0.5}]
