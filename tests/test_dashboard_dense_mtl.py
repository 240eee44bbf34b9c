"""The dense Instances page on a multi-task run (segmentation + depth + edges): besides the
segmentation panels it draws one row per continuous output, true / teacher / student and their
disparity |teacher − student|, with the stored maps' values."""
from __future__ import annotations

import numpy as np
import pytest

import test_dashboard_dense as dense_pages
from conftest_dashboard import open_instances
from kd_engine.store import open_run
from test_dense_task import config

RUN = "20260301-000300-dense-mtl"


def mtl_config(seed: int):
    heads = {"depth_head": True, "edge_head": True}
    data = config(seed=seed).to_dict()["data"]
    return config(seed=seed, data={**data, "params": {**data["params"], "edges": True, "classes": 3}},
                  teacher={"name": "fcn", "params": {"width": 4, **heads}},
                  student={"name": "fcn", "params": {"width": 2, **heads}})


@pytest.fixture(scope="module")
def mtl_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs_dense_mtl")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dense_pages, "config", mtl_config)
        dense_pages.record_dense_run(base, RUN, seed=3)
    return base


def test_instances_page_draws_depth_and_edge_rows(mtl_dir, monkeypatch):
    at = open_instances(mtl_dir, RUN, monkeypatch)
    iid = at.selectbox(key="dense_inst_image").value
    run = open_run(mtl_dir / RUN)
    for output in ("depth", "edges"):
        shown = dense_pages.panels(dense_pages.titled(at, f"image {iid}: {output}, true, teacher, student"))
        assert list(shown) == [f"true_{output}", f"teacher_{output}", f"student_{output}", f"{output}_disparity"]
        stored, ids = dense_pages.stored(mtl_dir / RUN, f"{output}_disparity")
        assert shown[f"{output}_disparity"] == pytest.approx(stored[ids.index(iid)].astype(float), abs=1e-3)
        teacher = run.load_artifact(f"dense/test/teacher_{output}")[ids.index(iid)]
        student = run.load_artifact(f"dense/test/student_{output}")[ids.index(iid)]
        assert np.abs(teacher - student) == pytest.approx(stored[ids.index(iid)], abs=1e-5)
