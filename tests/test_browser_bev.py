"""The BEV view in a real browser (the fixtures of tests/test_browser.py): a tiny RDD run of
configs/rdd_bev.yaml on the Instances page, test split, one probe scene with its heatmaps and
the regions RDD selected; screenshot artifacts/screenshots/bev_instances.png."""
from __future__ import annotations

import re

import yaml

from test_browser import REPO, SHOTS, browser, goto, idle, no_exception, served  # noqa: F401 (fixtures)
from test_rdd import SMOKE

pytestmark = __import__("test_browser").pytestmark


def test_bev_instances_page_is_screenshotted(served, browser):  # noqa: F811
    from kd_engine.config import validate
    from kd_engine.experiment import set_key
    from kd_engine.run import train

    raw = yaml.safe_load((REPO / "configs" / "rdd_bev.yaml").read_text())
    for key, value in SMOKE.items():
        set_key(raw, key, value)
    raw.update(runs_dir=str(served["runs"]), cache_dir=str(served["cache"]), device="cpu")
    raw["record"]["tensorboard"] = False
    run_id = train(validate(raw, "bev browser test"), distributed=False).name
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1500, "height": 2200})
    page.goto(served["url"])
    idle(page)
    page.get_by_text(re.compile(r"\d+ finished")).first.wait_for(timeout=90_000)  # the engine's read side loaded
    goto(page, "Instances")
    page.get_by_text(run_id).first.wait_for(timeout=90_000)  # the newest finished run is the one shown
    page.get_by_text("test", exact=True).first.click()
    idle(page)
    page.get_by_text("Probe scenes").first.wait_for(timeout=90_000)
    page.get_by_text("regions selected").first.wait_for(timeout=90_000)
    assert page.get_by_text("disparity and selected regions").count()
    no_exception(page, "Instances (bev)")
    page.screenshot(path=str(SHOTS / "bev_instances.png"), full_page=True)
    page.close()
