"""The diagnosis views on the dashboard (Streamlit AppTest, real runs with known faults): the
health panel on Runs and Curves names the fault and its evidence, Instances shows the copied
mistakes with both predictions and the weighting's effect, Features ranks the layers."""
from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO
from diagnosis_runs import fixture_runs  # noqa: F401  (fixture)
from conftest_dashboard import open_page

pytestmark = pytest.mark.slow




def table_with(at: AppTest, column: str):
    """The first table with this column (AppTest does not keep dataframe keys)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def titles(at: AppTest) -> list[str]:
    specs = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
    return [(s["layout"].get("title") or {}).get("text", "") for s in specs]


@pytest.mark.parametrize("page", ["runs", "curves"])
def test_health_panel_names_the_fault(fixture_runs, monkeypatch, page):
    at = open_page(fixture_runs.runs_dir, fixture_runs.shuffled.name, page, monkeypatch)
    errors = "\n".join(str(e.value) for e in at.error)
    assert "no better than chance" in errors and "val/teacher_acc" in errors
    assert "problem(s)" in "\n".join(str(m.value) for m in at.markdown)
    links = [el.proto.label for el in at.get("page_link")]
    assert "Open Curves: val/teacher_acc" in links  # the evidence is one click away


def test_health_panel_clean_run(fixture_runs, monkeypatch):
    at = open_page(fixture_runs.runs_dir, fixture_runs.clean.name, "curves", monkeypatch)
    assert not at.error and not at.warning
    assert any("no problem found" in str(m.value) for m in at.markdown)


def test_instances_copied_mistakes_and_weighting(fixture_runs, monkeypatch):
    at = open_page(fixture_runs.runs_dir, fixture_runs.clean.name, "instances", monkeypatch)
    assert at.selectbox(key="diag_control").value == fixture_runs.scratch.name
    metrics = {m.label: m.value for m in at.metric}
    assert "adopted by the student" in metrics and metrics["made by the scratch control"] != "–"
    shown = titles(at)
    assert "Teacher mistakes the student adopted" in shown
    assert any(t.startswith("Copied mistakes") for t in shown)
    table = table_with(at, "factor")
    assert set(table["factor"]) == {"teacher_correct", "student_final_correct"}


def test_features_ranks_layers(fixture_runs, monkeypatch):
    at = open_page(fixture_runs.runs_dir, fixture_runs.clean.name, "features", monkeypatch)
    assert any(t.startswith("Layers ranked") for t in titles(at))
    ranking = table_with(at, "auroc")
    assert ranking["auroc"].is_monotonic_decreasing and len(ranking) >= 2
