"""A tiny PointDC run on the Instances page in a real browser (fixtures of tests/test_browser.py):
the test split's probe scene as 3-D scatters coloured by truth, teacher and student, saved as
artifacts/screenshots/points_instances.png."""
from __future__ import annotations

from test_browser import REPO, SHOTS, browser, idle, goto, no_exception, pytestmark, served  # noqa: F401


def test_point_cloud_scene_is_screenshotted(served, browser):  # noqa: F811 (pytest fixtures)
    from kd_engine.config import load_config
    from kd_engine.run import train

    cfg = load_config(REPO / "configs" / "pointdc_rooms.yaml", [
        f"runs_dir={served['runs']}", f"cache_dir={served['cache']}", "epochs=2", "device=cpu",
        "data.params={scenes: 3, test_scenes: 1, points: 256, views: 2, image_size: 24, render_points: 3000, "
        "supervoxels: 24}",
        "distill.params.cmd_epochs=1", "distill.params.svc_warmup=1", "distill.params.primitives=6",
        "record.tensorboard=false", "record.attention_maps=1"])
    run_id = train(cfg).name
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 2600})
    page.goto(served["url"])
    idle(page)
    goto(page, "Instances")
    page.get_by_text(run_id).first.wait_for(timeout=90_000)  # the newest finished run is the one shown
    page.locator('[data-testid="stRadio"]').first.wait_for(timeout=90_000)
    page.locator('[data-testid="stRadio"]').get_by_text("test", exact=True).first.click()
    idle(page)
    page.get_by_text("Unsupervised segmentation on test").first.wait_for(timeout=90_000)
    page.get_by_text("truth, teacher and student").first.wait_for(timeout=90_000)  # the 3-D chart's title
    idle(page, settle_ms=2000)
    page.screenshot(path=str(SHOTS / "points_instances.png"), full_page=True)
    no_exception(page, "Instances (points)")
    assert page.get_by_text("student prediction").count() and page.get_by_text("teacher prediction").count()
    page.close()
