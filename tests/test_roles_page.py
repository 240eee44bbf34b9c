"""The role-change figures (workbench/figures/roles.py) and the dashboard's Roles page (AppTest)
on fixture runs written with the trainer's own RunWriter."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from streamlit.testing.v1 import AppTest

from conftest_dashboard import REPO, build_run
from kd_engine.store import RunWriter
from workbench.figures.roles import member_curves, role_members, role_share, role_timeline

GROUP = "20260101-000400-fixture_orc-cccc"
PLAIN = "20260101-000100-fixture_kd-aaaa"
MEMBERS = ["T0", "S1", "S2", "S3"]
STEPS_PER_EPOCH, EPOCHS = 5, 3


def promoted(step: int) -> str:
    """S1 for the first 5 steps, then S2 for 5, then S3 for 5: a known timeline."""
    return ["S1", "S2", "S3"][step // STEPS_PER_EPOCH]


def role_frame() -> pd.DataFrame:
    rows = []
    for step in range(STEPS_PER_EPOCH * EPOCHS):
        for member in MEMBERS:
            value = 1.0 if member in ("T0", promoted(step)) else 0.0
            rows.append({"key": f"role/{member}", "step": step, "epoch": step // STEPS_PER_EPOCH, "value": value})
    return pd.DataFrame(rows)


def build_group_run(base: Path) -> Path:
    writer = RunWriter.create(base, "fixture_orc", {"method": "orc", "dataset": "digits", "epochs": EPOCHS,
                                                    "student": "mlp(hidden=32)", "teacher": "mlp(hidden=256)"},
                              yaml.safe_dump({"name": "fixture_orc", "method": "orc"}), run_id=GROUP,
                              tensorboard=False)
    for row in role_frame().itertuples():
        writer.log_scalars(row.step, row.epoch, {row.key: row.value})
    for epoch in range(EPOCHS):
        writer.log_scalars(STEPS_PER_EPOCH * (epoch + 1), epoch,
                           {f"val/member/{m}_acc": 0.5 + 0.1 * epoch + 0.01 * i for i, m in enumerate(MEMBERS)})
    writer.set_meta(reported_student="S3", final_metrics={"test/student_acc": 0.9})
    writer.set_status("finished")
    writer.close()
    return writer.run_dir


def open_app(runs_dir: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("KDW_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120).run()
    at.switch_page("workbench/pages/roles.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def figures(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


# -- figures -----------------------------------------------------------------------------------
def test_role_timeline_has_the_known_cells():
    fig = role_timeline(role_frame())
    heat = fig.data[0]
    assert list(heat.y) == MEMBERS and list(heat.x) == list(range(15))
    z = np.asarray(heat.z)
    assert z[0].tolist() == [1.0] * 15  # T0 always teaches
    assert z[1].tolist() == [1.0] * 5 + [0.0] * 10
    assert z[3].tolist() == [0.0] * 10 + [1.0] * 5
    assert (z[1:].sum(axis=0) == 1.0).all()


def test_role_timeline_bins_long_runs_into_shares():
    fig = role_timeline(role_frame(), max_columns=3)
    z = np.asarray(fig.data[0].z)
    assert list(fig.data[0].x) == [0, 5, 10]
    assert z[1:].tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    assert "15 steps in 3 bins" in fig.layout.title.text


def test_role_share_with_and_without_seeds():
    frame = role_frame()
    fig = role_share(frame)
    assert list(fig.data[0].x) == MEMBERS
    np.testing.assert_allclose(fig.data[0].y, [1.0, 1 / 3, 1 / 3, 1 / 3])
    other = frame.assign(value=np.where(frame["key"] == "role/S1", 0.0, frame["value"]), seed=1)
    pooled = role_share(pd.concat([frame.assign(seed=0), other]), by="seed")
    np.testing.assert_allclose(pooled.data[0].y, [1.0, 1 / 6, 1 / 3, 1 / 3])
    assert len(pooled.data[1].x) == 8  # one point per member and seed


def test_member_curves_and_member_order():
    frame = pd.DataFrame([{"key": f"val/member/{m}_acc", "epoch": e, "step": e, "value": e / 10}
                          for m in ("S2", "T0", "S1") for e in range(3)])
    fig = member_curves(frame)
    assert [t.name for t in fig.data] == ["T0", "S1", "S2"]
    assert list(fig.data[0].y) == [0.0, 0.1, 0.2]
    assert role_members(pd.DataFrame({"key": ["role/S10", "role/S2", "role/T0", "train/loss"]})) == ["T0", "S2", "S10"]


def test_empty_frames_give_an_empty_figure():
    fig = role_timeline(pd.DataFrame({"key": ["train/loss"], "step": [0], "epoch": [0], "value": [1.0]}))
    assert not fig.data and "no role" in fig.layout.title.text


# -- the page ----------------------------------------------------------------------------------
def test_roles_page_shows_the_group_run(tmp_path, monkeypatch):
    base = tmp_path / "runs"
    build_run(base, PLAIN)
    build_group_run(base)
    at = open_app(base, monkeypatch)
    assert at.sidebar.selectbox(key="roles_run").options == [f"✓ {GROUP}"]
    figs = figures(at)
    timeline = next(f for f in figs if "role timeline (reconstruction)" in f["layout"]["title"]["text"])
    z = np.asarray(timeline["data"][0]["z"])
    assert timeline["data"][0]["y"] == MEMBERS and z.shape == (4, 15)
    assert z[2].tolist() == [0.0] * 5 + [1.0] * 5 + [0.0] * 5
    share = next(f for f in figs if "promotion frequency" in f["layout"]["title"]["text"])
    np.testing.assert_allclose(share["data"][0]["y"], [1.0, 1 / 3, 1 / 3, 1 / 3])
    curves = next(f for f in figs if "group member" in f["layout"]["title"]["text"])
    assert [t["name"] for t in curves["data"]] == MEMBERS
    table = at.dataframe[0].value
    assert list(table.columns) == MEMBERS and table.loc[1, "S2"] == 1.0 and table.loc[1, "S1"] == 0.0
    assert "Reported student (best validation accuracy): **S3**" in "\n".join(c.value for c in at.caption)


def test_roles_page_without_group_runs_explains(tmp_path, monkeypatch):
    base = tmp_path / "runs"
    build_run(base, PLAIN)
    at = open_app(base, monkeypatch)
    assert "No run here records roles" in "\n".join(i.value for i in at.info)
    empty = open_app(tmp_path / "none", monkeypatch)
    assert "No runs under" in "\n".join(i.value for i in empty.info)
