"""A tiny UP-VL run on the Instances page in a real browser (fixtures of tests/test_browser.py):
the test split's probe scene coloured by truth, the 2-D teacher and the student's zero-shot
names, saved as artifacts/screenshots/upvl_instances.png."""
from __future__ import annotations

from test_browser import REPO, SHOTS, browser, idle, goto, no_exception, pytestmark, served  # noqa: F401


def test_zero_shot_scene_is_screenshotted(served, browser):  # noqa: F811 (pytest fixtures)
    from kd_engine.config import load_config
    from kd_engine.run import train

    cfg = load_config(REPO / "configs" / "upvl_scenes.yaml", [
        f"runs_dir={served['runs']}", f"cache_dir={served['cache']}", "epochs=2", "eval_every=2", "device=cpu",
        "data.params={scenes: 5, test_scenes: 1, points: 272, points_per_object: 48, image_size: 24, "
        "render_points: 3000}", "data.batch_size=2",
        "distill.params.teacher_images=20", "distill.params.teacher_epochs=1",
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
    page.get_by_text("truth, teacher and student").first.wait_for(timeout=90_000)  # the 3-D chart's title
    idle(page, settle_ms=2000)
    page.screenshot(path=str(SHOTS / "upvl_instances.png"), full_page=True)
    no_exception(page, "Instances (UP-VL)")
    assert page.get_by_text("student prediction").count() and page.get_by_text("teacher prediction").count()
    page.close()
