"""Forward FLOPs counted with FlopCounterMode: hand-computed values on tiny models, and the Compare
page's accuracy-vs-FLOPs trade-off on fixture runs."""
from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest
from torch import nn

from conftest_dashboard import REPO, finished_dir  # noqa: F401  (fixture)
from kd_engine.inspection import RunInspector, forward_flops


@pytest.mark.parametrize("batch", [1, 4])
def test_linear_flops_are_two_in_out_per_instance(batch):
    assert forward_flops(nn.Linear(7, 5), (7,), batch=batch) == 2 * 7 * 5
    assert forward_flops(nn.Linear(7, 5, bias=False), (7,), batch=batch) == 2 * 7 * 5


def test_flops_add_up_over_layers_and_keep_the_mode():
    model = nn.Sequential(nn.Linear(12, 6), nn.ReLU(), nn.BatchNorm1d(6), nn.Linear(6, 3)).train()
    assert forward_flops(model, (12,)) == 2 * 12 * 6 + 2 * 6 * 3  # batch 1 works: counted in eval
    assert model.training
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    assert forward_flops(conv, (1, 8, 8)) == 2 * (1 * 3 * 3) * 4 * (8 * 8) + 2 * 256 * 10
    assert forward_flops(nn.Linear(3, 2).double(), (3,)) == 12  # the input follows the model's dtype


def test_run_inspector_flops_and_compare_axis(finished_dir, monkeypatch):  # noqa: F811
    kd = finished_dir / "20260101-000100-fixture_kd-aaaa"
    inspector = RunInspector(kd)
    student, teacher = inspector.flops("student"), inspector.flops("teacher")
    assert 0 < student < teacher  # resnet width 4 against width 8
    assert student == forward_flops(inspector.model("student"), (1, 8, 8))

    monkeypatch.setenv("KDW_RUNS_DIR", str(finished_dir))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
    at.session_state["kdw_run"] = kd.name
    at.run()
    at.switch_page("workbench/pages/compare.py").run()
    at.radio(key="cmp_axis").set_value("FLOPs (forward, per instance)").run()
    assert not at.exception, [e.value for e in at.exception]
    figs = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
    trade = next(f for f in figs if "FLOPs" in (f["layout"].get("title") or {}).get("text", ""))
    points = {t["name"]: t["x"] for t in trade["data"]}
    assert points["teacher"] == [teacher] and student in points["student"] and len(points["student"]) == 2
    assert trade["layout"]["xaxis"]["title"]["text"] == "forward FLOPs"
