"""The Instances page on a tiny ZeroSeg run (stand-in teacher, as in test_zeroseg): the dense
records and maps come first, then the segment section: views matched to each token (bars built
from the recorded `view_token_<v>` columns), the probe image's truth, teacher, student and
assignment maps (checked against the recorded artifacts) and the matched-view table."""
from __future__ import annotations

import numpy as np
import pytest

from conftest_dashboard import charts, open_instances
from test_zeroseg import _config, _train
from kd_engine.store import open_run


@pytest.fixture(scope="module")
def zeroseg_run(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    from test_zeroseg import _teacher

    mp.setattr("kd_engine.methods.zeroseg.shared_image_text_teacher", _teacher)
    base = tmp_path_factory.mktemp("runs_zeroseg")
    run_dir = _train(_config(base))
    mp.undo()
    return base / "runs", run_dir.name


def test_test_split_shows_token_usage_and_assignment_maps(zeroseg_run, monkeypatch):
    at = open_instances(*zeroseg_run, monkeypatch)
    at.radio(key="inst_split").set_value("test").run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    figures = charts(at)
    usage = next(spec for title, spec in figures.items() if title.startswith("views matched to each segment token"))
    run = open_run(zeroseg_run[0] / zeroseg_run[1])
    test = run.instances(split="test")
    recorded = test[[f"view_token_{v}" for v in range(5)]].to_numpy().ravel()
    assert usage["data"][0]["y"] == np.bincount(recorded[recorded >= 0].astype(int), minlength=6)[:6].tolist()
    panels = next(spec for title, spec in figures.items() if "segment assignment" in title)
    iid = at.selectbox(key="seg_probe").value
    assign = run.load_artifact("segments/test/assign")[0]
    drawn = [trace for trace in panels["data"] if trace.get("hovertemplate") == "%{text}<extra></extra>"]
    assert np.array_equal(np.asarray(drawn[0]["z"])[::-1], assign) and iid == test["instance_id"].min()
    table = at.dataframe[-1].value  # the matched-view table closes the page
    assert list(table["view"])[:2] == ["whole image", "2x2 cell 0"] and len(table) == 5
