"""Every dashboard page rendered with Streamlit's AppTest against fixture run stores: empty,
running, finished, failed, stale, corrupted and locked. Assertions read the plotly figures'
data, the tables' rows and the messages, and require that no page raised."""
from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest_dashboard import (  # noqa: F401  (fixtures)
    LIVE_WRITERS, REPO, TEST_IDS, TRAIN_IDS, LockedRun, broken_dir, build_run, finished_dir, running_dir)
from kd_engine.store import RunWriter
from workbench import launcher

PAGES = ["runs", "curves", "instances", "features", "attention", "compare", "methods"]
KD, SCRATCH, FAILED = ("20260101-000100-fixture_kd-aaaa", "20260101-000200-fixture_scratch-bbbb",
                       "20260101-000050-fixture_kd-fail")


def open_app(runs_dir: Path, monkeypatch, run_id: str | None = None) -> AppTest:
    monkeypatch.setenv("KDW_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
    if run_id:
        at.session_state["kdw_run"] = run_id
    return at.run()


def page(at: AppTest, name: str) -> AppTest:
    at.switch_page(f"workbench/pages/{name}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def figures(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def titled(at: AppTest, text: str) -> dict:
    found = [f for f in figures(at) if text in (f["layout"].get("title") or {}).get("text", "")]
    assert found, [f["layout"].get("title") for f in figures(at)]
    return found[0]


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


# -- empty, broken and locked stores ------------------------------------------------------------
@pytest.mark.parametrize("exists", [True, False])
def test_empty_runs_dir_every_page_explains(tmp_path, monkeypatch, exists):
    base = tmp_path / "runs"
    if exists:
        base.mkdir()
    at = open_app(base, monkeypatch)
    for name in PAGES[:-1]:
        page(at, name)
        assert "No runs under" in texts(at.info), name
    page(at, "methods")
    assert at.dataframe[0].value.shape[0] == 29


def test_corrupted_and_stale_runs(broken_dir, monkeypatch):
    at = open_app(broken_dir, monkeypatch)
    page(at, "runs")
    table = at.dataframe[0].value
    assert set(table["status"]) == {"✗ corrupt", "⚠ stale"}
    assert "unreadable run database" in texts(at.error)
    for name in PAGES[1:]:
        page(at, name)
    page(at, "instances")
    assert "stopped sending heartbeats" in texts(at.warning)


def test_locked_database_is_a_message(tmp_path, monkeypatch):
    base = tmp_path / "runs"
    locked = LockedRun(base)
    try:
        at = open_app(base, monkeypatch)
        page(at, "runs")
        assert "database is locked" in texts(at.warning)
        assert "⊘ locked" in set(at.dataframe[0].value["status"])
        page(at, "instances")
        assert "every run under this directory is unreadable" in texts(at.error).lower()
    finally:
        locked.release()
    page(at, "instances")
    assert not at.error and at.get("plotly_chart")


# -- finished runs ------------------------------------------------------------------------------
def test_runs_page_lists_filters_and_sorts(finished_dir, monkeypatch):
    at = page(open_app(finished_dir, monkeypatch), "runs")
    table = at.dataframe[0].value
    assert set(table["run_id"]) == {KD, SCRATCH, FAILED}
    row = table[table.run_id == KD].iloc[0]
    assert row["test/student_acc"] == pytest.approx(0.81) and row["method"] == "standard"
    assert "loss became NaN" in table[table.run_id == FAILED].iloc[0]["error"]
    at.multiselect(key="runs_status").set_value(["✓ finished".split()[-1]]).run()
    assert set(at.dataframe[0].value["run_id"]) == {KD, SCRATCH}
    at.selectbox(key="runs_sort").set_value("test/student_acc").run()
    at.toggle(key="runs_desc").set_value(False).run()
    assert not at.exception
    at.text_input(key="runs_search").set_value("scratch").run()
    assert at.dataframe[0].value["run_id"].tolist() == [SCRATCH]


def test_failed_run_shows_its_error(finished_dir, monkeypatch):
    at = open_app(finished_dir, monkeypatch, run_id=FAILED)
    page(at, "runs")
    assert "This run failed: loss became NaN at step 12" in texts(at.error)
    page(at, "instances")
    assert "This run failed" in texts(at.error)


def test_curves_overlay_smoothing_and_export(finished_dir, monkeypatch):
    at = page(open_app(finished_dir, monkeypatch, run_id=KD), "curves")
    loss = titled(at, "train/task")
    assert [t["name"] for t in loss["data"] if t.get("showlegend", True)] == [KD]
    assert len(loss["data"][-1]["x"]) == 30  # 3 epochs x 10 steps
    at.multiselect(key="curves_runs").set_value([KD, SCRATCH]).run()
    at.slider(key="curves_smooth").set_value(0.0).run()
    at.toggle(key="curves_log").set_value(True).run()
    loss = titled(at, "train/task")
    assert sorted(t["name"] for t in loss["data"]) == sorted([KD, SCRATCH])
    assert loss["layout"]["yaxis"]["type"] == "log"
    assert np.allclose(loss["data"][0]["y"][:2], [1.5, 0.75])
    assert any(b.label == "Export CSV" for b in at.get("download_button"))


def test_instances_page(finished_dir, monkeypatch):
    at = page(open_app(finished_dir, monkeypatch, run_id=KD), "instances")
    hist = titled(at, "weights at epoch 2")
    assert len(hist["data"][0]["x"]) == len(TRAIN_IDS)
    scatter = titled(at, "weight vs teacher_loss")
    assert sum(len(t["x"]) for t in scatter["data"]) == len(TRAIN_IDS)
    assert {t["name"] for t in scatter["data"]} <= {str(k) for k in range(10)}
    gallery = titled(at, "Highest weighted")
    assert len(gallery["data"]) == 8
    traj = titled(at, "weight across epochs")
    assert len(traj["data"]) == 6 and all(len(t["x"]) == 3 for t in traj["data"])
    decisions = at.dataframe[0].value  # the method's recorded decision ('selected') per value
    assert at.selectbox(key="inst_decision").options == ["selected"]
    assert list(decisions["selected value"]) == [0.0, 1.0] and decisions["instances"].sum() == len(TRAIN_IDS)
    assert abs(decisions["share"].sum() - 1.0) < 1e-9 and "mean teacher_loss" in decisions
    assert sum(len(t["x"]) for t in titled(at, "selected vs teacher_loss")["data"]) == len(TRAIN_IDS)
    table = at.dataframe[1].value
    assert len(table) == len(TRAIN_IDS) and table["weight"].is_monotonic_decreasing
    at.multiselect(key="inst_classes").set_value([3]).run()
    assert set(at.dataframe[1].value["label"]) == {3}
    at.select_slider(key="inst_epoch_train").set_value(0).run()
    assert titled(at, "weights at epoch 0")
    at.radio(key="inst_split").set_value("val").run()
    assert "No weights on this split" in texts(at.info)
    labels = {b.label for b in at.get("download_button")}
    assert {"Export CSV", "Export Parquet"} <= labels


def test_features_page(finished_dir, monkeypatch):
    at = page(open_app(finished_dir, monkeypatch, run_id=KD), "features")
    heat = titled(at, "disparity by layer and epoch")
    assert heat["data"][0]["y"] == ["layer1", "layer2"] and heat["data"][0]["x"] == [0, 1, 2]
    assert np.asarray(heat["data"][0]["z"]).shape == (2, 3)
    maps = titled(at, "mean |activation|")
    assert [t["name"] for t in maps["data"]] == ["input", "teacher", "student", "difference"]
    assert np.asarray(maps["data"][1]["z"]).shape == (8, 8)
    assert any("Pearson" in m.label for m in at.metric)
    at.radio(key="feat_metric").set_value("cka").run()
    assert titled(at, "cka by layer")
    at = page(open_app(finished_dir, monkeypatch, run_id=SCRATCH), "features")
    assert "no teacher–student feature comparisons" in texts(at.info)


def test_attention_page_recorded_and_computed(finished_dir, monkeypatch):
    at = page(open_app(finished_dir, monkeypatch, run_id=KD), "attention")
    recorded = titled(at, "spatial attention")
    assert [t["name"] for t in recorded["data"]] == ["input", "teacher", "student", "difference"]
    computed = titled(at, "Grad-CAM")
    teacher = np.asarray(computed["data"][1]["z"])
    assert teacher.shape == (8, 8) and teacher.min() >= 0 and teacher.max() <= 1
    assert sum("Agreement" in m.label for m in at.metric) == 4
    for method in ("saliency", "integrated_gradients"):
        at.radio(key="att_method").set_value(method).run()
        assert not at.exception
        assert len(titled(at, {"saliency": "Saliency", "integrated_gradients": "Integrated"}[method])["data"]) == 4
    at.text_input(key="att_other").set_value("150").run()
    assert "instance 150" in texts(at.caption)
    at.text_input(key="att_other").set_value("abc").run()
    assert "integer" in texts(at.error)


def test_attention_vit_student(tmp_path, monkeypatch):
    base = tmp_path / "runs"
    build_run(base, "20260101-000600-fixture_vit-cccc", vit_student=True, epochs=1)
    at = page(open_app(base, monkeypatch), "attention")
    at.radio(key="att_method").set_value("vit_rollout").run()
    assert not at.exception
    assert [t["name"] for t in titled(at, "rollout")["data"]] == ["input", "student"]
    assert "The teacher is not a ViT" in texts(at.caption)


def test_attention_without_teacher_or_checkpoint(finished_dir, monkeypatch):
    at = page(open_app(finished_dir, monkeypatch, run_id=SCRATCH), "attention")
    assert "only the student" in texts(at.info)
    assert [t["name"] for t in titled(at, "Grad-CAM")["data"]] == ["input", "student"]
    at = page(open_app(finished_dir, monkeypatch, run_id=FAILED), "attention")
    assert "No checkpoint yet" in texts(at.info)


def test_compare_page(finished_dir, monkeypatch):
    at = page(open_app(finished_dir, monkeypatch, run_id=KD), "compare")
    teacher = titled(at, "teacher")
    assert np.asarray(teacher["data"][0]["z"]).sum() == len(TEST_IDS)
    pca = titled(at, "per-class accuracy")
    assert [t["name"] for t in pca["data"]] == ["teacher", "student"]
    assert any(m.label == "teacher–student agreement" for m in at.metric)
    disagree = at.dataframe[0].value
    assert len(disagree) > 0 and set(disagree.columns) == {"instance_id", "true", "teacher", "student"}
    trade = titled(at, "accuracy vs parameters")
    points = {(t["name"], x) for t in trade["data"] for x in t["x"]}
    assert ("student", 5000) in points and ("teacher", 20000) in points
    at.radio(key="cmp_axis").set_value("latency (CPU ms per instance)").run()
    trade = titled(at, "CPU latency")
    assert all(x > 0 for t in trade["data"] for x in t["x"]) and len(trade["data"][0]["x"]) == 2
    at.radio(key="cmp_mode").set_value("Run vs run").run()
    at.selectbox(key="cmp_a").set_value(KD).run()
    at.selectbox(key="cmp_b").set_value(SCRATCH).run()
    assert not at.exception
    assert np.asarray(titled(at, f"A: {KD}")["data"][0]["z"]).sum() == len(TEST_IDS)


def test_methods_page_status_is_computed(finished_dir, monkeypatch, tmp_path):
    from workbench.pages import methods

    at = page(open_app(finished_dir, monkeypatch), "methods")
    table = at.dataframe[0].value
    assert len(table) == 29 and table["method"].iloc[0] == "AID"
    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "configs").mkdir()
    (root / "notebooks" / "22_dot.ipynb").write_text("{}")
    (root / "notebooks" / "01_ssd_det.ipynb").write_text("{}")
    (root / "configs" / "dot_demo.yaml").write_text("name: x\n")
    (root / "docs" / "results.md").write_text("| method | acc |\n|---|---|\n| DOT | 0.97 ± 0.01 |\n")
    cat = methods.catalogue(root, registered=["standard", "cr_kd", "sdd_weighting"]).set_index("method")
    assert cat.loc["DOT", "status"] == "reproduced" and "0.97" in cat.loc["DOT", "result (docs/results.md)"]
    assert cat.loc["DOT", "demo config"] == "configs/dot_demo.yaml"
    assert cat.loc["SSD-Det", "status"] == "notebook"
    assert cat.loc["SDD", "status"] == "implemented"  # 'ssd_det' is not a mention of SDD
    assert cat.loc["Cr-KD", "status"] == "implemented"
    assert cat.loc["BOSS", "status"] == "planned"
    # a notebook's own section of results.md counts, whatever its arms are called
    (root / "docs" / "results.md").write_text(
        "## SSD-Det in miniature\n\nNotebook `notebooks/01_ssd_det.ipynb`; budget **full**\n\n"
        "| arm | metric | n | mean ± std |\n|---|---|---|---|\n| noisy@0.4 | test/iou | 3 | 0.49 ± 0.01 |\n\n"
        "## Another notebook\n\nNotebook `notebooks/22_dot.ipynb`; budget **full**\n\n")
    cat = methods.catalogue(root, registered=[]).set_index("method")
    assert cat.loc["SSD-Det", "status"] == "reproduced" and "0.49" in cat.loc["SSD-Det", "result (docs/results.md)"]
    assert cat.loc["DOT", "status"] == "notebook"  # a section without rows is not a result


# -- a running run and live curves --------------------------------------------------------------
def test_running_run_live_curves_read_only_new_rows(running_dir, monkeypatch):
    run_id = "20260101-000300-fixture_kd-live"
    at = open_app(running_dir, monkeypatch)
    assert "● 1 running" in texts(at.caption)
    page(at, "curves")
    assert "still training" not in texts(at.info)  # Curves shows a live marker instead
    assert "live: refreshing" in texts(at.caption)
    before = len(titled(at, "train/task")["data"][-1]["x"])
    writer = LIVE_WRITERS[running_dir / run_id]  # the live trainer's writer (it holds the run)
    for step in range(20, 25):
        writer.log_scalars(step, 2, {"train/task": 0.01, "train/loss": 0.02})
    writer.flush()
    writer.heartbeat()
    at.run()
    assert f"{run_id}: " in texts(at.caption) and "(+10 new)" in texts(at.caption)
    assert len(titled(at, "train/task")["data"][-1]["x"]) == before + 5
    for name in ("instances", "features", "attention", "compare"):
        page(at, name)
        assert "still training" in texts(at.info), name


def test_curves_poll_a_run_caught_before_its_metadata(tmp_path, monkeypatch):
    """A store opened in the instant between its tables and its metadata reads as starting, and
    Curves keeps polling it: otherwise the page would sit at 0 points while the run trains."""
    runs = tmp_path / "runs"
    writer = RunWriter(runs / "20260101-000000-caught-early", tensorboard=False)
    at = page(open_app(runs, monkeypatch, run_id="20260101-000000-caught-early"), "curves")
    assert "live: refreshing" in texts(at.caption)
    assert "caught-early: 0 points" in texts(at.caption)
    writer.set_status("running")
    writer.log_scalars(1, 0, {"train/task": 0.5})
    writer.flush()
    at.run()
    assert "caught-early: 1 points" in texts(at.caption)
    writer.close()


# -- launching, stopping and resuming -----------------------------------------------------------
def _cli_error(text: str, tmp_path: Path) -> str:
    from kd_engine import cli

    path = tmp_path / "edited.yaml"
    path.write_text(text)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.main(["train", str(path), "--runs-dir", str(tmp_path / "cli_runs")]) == 2
    return err.getvalue().strip().replace(str(path), "configs/demo_kd.yaml")


@pytest.mark.parametrize("bad", ["epochs: -1", "optimizer: {name: lion}", "method: nope", "epochs: [1"])
def test_launch_form_shows_the_cli_error(tmp_path, monkeypatch, bad):
    monkeypatch.setattr(launcher, "_spawn", lambda *a: pytest.fail("an invalid config was launched"))
    at = page(open_app(tmp_path / "runs", monkeypatch), "runs")
    source = (REPO / "configs" / "demo_kd.yaml").read_text()
    text = source.replace("epochs: 10", bad) if bad.startswith("epochs") else source + bad + "\n"
    area = at.text_area[0]
    area.set_value(text)
    at.button[-1].click().run()
    assert not at.exception
    assert texts(at.error) == _cli_error(text, tmp_path)
    assert not (tmp_path / "runs" / launcher.LAUNCH_DIR).exists() or not list(
        (tmp_path / "runs" / launcher.LAUNCH_DIR).glob("*.json"))


def test_launch_form_starts_kdw_train(tmp_path, monkeypatch):
    calls = []

    def fake_spawn(command, base, run_id, kind, config):
        calls.append(command)
        return {"run_id": run_id, "pid": 0, "log": str(base / "x.log"), "kind": kind}

    monkeypatch.setattr(launcher, "_spawn", fake_spawn)
    at = page(open_app(tmp_path / "runs", monkeypatch), "runs")
    epochs = [w for w in at.number_input if w.key.split("_", 2)[-1] == "epochs"]
    epochs[0].set_value(3)
    at.button[-1].click().run()
    assert "Launched run" in texts(at.success), texts(at.error)
    command = calls[0]
    assert command[:4] == [sys.executable, "-m", "kd_engine.cli", "train"]
    run_id = command[command.index("--run-id") + 1]
    assert run_id.split("-")[2] == "demo_kd"
    assert command[command.index("--runs-dir") + 1] == str((tmp_path / "runs").resolve())
    written = launcher.parse_yaml(Path(command[4]).read_text())
    assert written["epochs"] == 3  # the schema form's change overrides the YAML
    assert at.session_state["kdw_run"] == run_id


def test_launcher_pending_stop_and_failed(tmp_path, monkeypatch):
    base = tmp_path / "runs"
    sleeper = launcher._spawn([sys.executable, "-c", "import time; time.sleep(60)"], base, "r-sleep", "train", None)
    crasher = launcher._spawn([sys.executable, "-c", "import sys; print('error: data.name: bad'); sys.exit(2)"],
                              base, "r-crash", "train", None)
    deadline = time.time() + 20
    while launcher.pid_alive(crasher["pid"]) and time.time() < deadline:
        time.sleep(0.1)
    states = {p["run_id"]: p for p in launcher.pending(base)}
    assert states["r-sleep"]["status"] == "starting"
    assert states["r-crash"]["status"] == "failed" and states["r-crash"]["error"] == "error: data.name: bad"
    at = page(open_app(base, monkeypatch), "runs")  # launches without a store yet are listed
    table = at.dataframe[0].value.set_index("run_id")
    assert table.loc["r-sleep", "status"] == "… starting" and table.loc["r-crash", "status"] == "✗ failed"
    assert "sent SIGTERM" in launcher.stop("r-sleep", base)
    while launcher.pid_alive(sleeper["pid"]) and time.time() < deadline:
        time.sleep(0.1)
    assert {p["run_id"]: p["status"] for p in launcher.pending(base)}["r-sleep"] == "failed"
    with pytest.raises(Exception, match="not running"):
        launcher.stop("r-sleep", base)


def test_stop_and_resume_buttons(finished_dir, monkeypatch, tmp_path):
    base = tmp_path / "runs"
    build_run(base, "20260101-000500-fixture_kd-stop", status="stopped", epochs=1)
    (base / "20260101-000500-fixture_kd-stop" / "checkpoints" / "state.pt").write_bytes(b"x")
    calls = []
    monkeypatch.setattr(launcher, "_spawn", lambda command, *a: calls.append(command) or {"pid": 1})
    at = page(open_app(base, monkeypatch), "runs")
    assert "was stopped" in texts(at.info)
    stop = next(b for b in at.button if b.label == "Stop")
    assert stop.disabled
    next(b for b in at.button if b.label == "Resume").click().run()
    assert "Resuming" in texts(at.success)
    assert calls[0][4:6] == ["--resume", str((base / "20260101-000500-fixture_kd-stop").resolve())]


# -- the inspection module ----------------------------------------------------------------------
def test_inspect_vit_attention_and_agreement():
    import torch

    from kd_engine import inspection as kinspect
    from kd_engine.models import build_model

    class Spec:
        name, params = "vit", {"patch": 2, "dim": 16, "depth": 2, "heads": 2}

    model = build_model(Spec(), (1, 8, 8), 10).eval()
    x = torch.rand(3, 1, 8, 8)
    for method in ("vit_attention", "vit_rollout"):
        maps = kinspect.attribution(model, x, method, torch.zeros(3, dtype=torch.long))
        assert maps.shape == (3, 8, 8) and np.all(maps >= 0)
    rollout = kinspect.vit_attention(model, x, rollout=True)
    patch_mass = rollout[:, ::2, ::2].reshape(3, -1).sum(1)  # the rest stays on the [cls] token
    assert np.all((patch_mass > 0) & (patch_mass < 1))
    a = np.add.outer(np.arange(8.0), np.arange(8.0) ** 2)  # smooth, so resizing keeps its shape
    assert kinspect.agreement(a, a)["pearson"] == pytest.approx(1.0)
    assert kinspect.agreement(a, -a)["pearson"] == pytest.approx(-1.0)
    assert kinspect.agreement(a, a[::2, ::2])["pearson"] > 0.3  # resized before comparing
