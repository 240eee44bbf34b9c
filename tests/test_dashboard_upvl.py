"""The point-cloud Instances page on a real tiny UP-VL run (configs/upvl_scenes.yaml): the
training split shows what the method decided per scene (auto-label counts, visible fraction);
the test split shows a probe scene coloured by truth, teacher and the student's zero-shot
names (colours checked against the recorded artifacts), scored without matching."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest_dashboard import REPO
from kd_engine.config import load_raw, validate
from kd_engine.store import open_run
from workbench.figures.points import class_colours

from conftest_dashboard import charts, open_instances

TINY = {"scenes": 5, "test_scenes": 1, "points": 272, "points_per_object": 48, "image_size": 16, "render_points": 2000}


@pytest.fixture(scope="module")
def upvl_run(tmp_path_factory) -> tuple[Path, str]:
    from kd_engine.run import train

    base = tmp_path_factory.mktemp("runs_upvl")
    raw = load_raw(REPO / "configs" / "upvl_scenes.yaml")
    raw.update(epochs=1, eval_every=1, runs_dir=str(base / "runs"), cache_dir=str(base / "cache"), device="cpu")
    raw["data"]["params"] = dict(TINY)
    raw["data"]["batch_size"] = 2
    raw["distill"]["params"].update(teacher_images=20, teacher_epochs=1)
    raw["record"] = {"tensorboard": False, "attention_maps": 1}
    run_dir = train(validate(raw, "upvl dashboard test"), distributed=False)
    return base / "runs", Path(run_dir).name


def test_training_split_shows_auto_label_decisions(upvl_run, monkeypatch):
    at = open_instances(*upvl_run, monkeypatch)
    titles = list(charts(at))
    for column in ("moving_labels", "static_labels", "visible_fraction", "distill_loss"):
        assert any(t.startswith(column) for t in titles), (column, titles)


def test_test_split_shows_zero_shot_names(upvl_run, monkeypatch):
    runs_dir, run_id = upvl_run
    run = open_run(runs_dir / run_id)
    at = open_instances(runs_dir, run_id, monkeypatch)
    at.radio(key="inst_split").set_value("test").run()
    assert not at.exception, [e.value for e in at.exception]
    scatter = next(v for k, v in charts(at).items() if k.startswith("scene #") and "truth" in k)
    traces = {t["name"]: t for t in scatter["data"]}
    assert list(traces) == ["truth", "teacher prediction", "student prediction"]
    named = run.load_artifact("points/test/student_pred")[0]
    assert traces["student prediction"]["marker"]["color"] == class_colours(named, 6)
    assert named.min() >= 0  # every point is named (the ground below objectness 1/2): nothing unmatched
