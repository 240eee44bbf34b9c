"""`kdw report` in a real browser (headless Debian chromium via Playwright): the single-run and
the two-run report open from the file with no console error and their figures draw; and the
dashboard's health panel and copied-mistakes view, screenshotted (artifacts/diagnosis/health.png
and copied_mistakes.png, the README's copies in docs/screenshots/ come from there)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, kdw
from diagnosis_runs import fixture_runs  # noqa: F401  (fixture)

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "artifacts" / "diagnosis"
IDLE = ("() => !document.querySelector('[data-testid=\"stStatusWidget\"], [data-testid=\"stSkeleton\"], "
        "[data-testid=\"stSpinner\"]')")

pytestmark = [
    pytest.mark.slow, pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                      "(apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                      args=["--no-sandbox", "--enable-unsafe-swiftshader", "--disable-gpu"])
        yield chromium
        chromium.close()


def external_resources(text: str) -> list[str]:
    """src/href attributes of the page's own tags that point outside the file."""
    from html.parser import HTMLParser

    found: list[str] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            for name, value in attrs:
                if name in ("src", "href") and value and not value.startswith(("data:", "#")):
                    found.append(f"<{tag} {name}={value}>")

    Parser().feed(text)
    return found


def open_file(browser, path: Path):
    """The page and every console error or uncaught exception it raised while loading."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(path.resolve().as_uri())
    page.wait_for_function("() => document.querySelectorAll('.plotly-graph-div .main-svg').length > 0",
                           timeout=60_000)
    page.wait_for_timeout(1000)
    return page, errors


@pytest.mark.parametrize("compare", [False, True], ids=["one_run", "two_runs"])
def test_report_opens_offline_without_console_errors(fixture_runs, browser, tmp_path, compare):
    runs = [fixture_runs.clean.name] + ([fixture_runs.shuffled.name] if compare else [])
    out = tmp_path / "report.html"
    result = kdw("report", *runs, "--runs-dir", fixture_runs.runs_dir, "--output", out, timeout=300)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == out and out.is_file()
    assert external_resources(out.read_text()) == []  # plotly.js inlined: the file opens offline
    page, errors = open_file(browser, out)
    try:
        assert errors == []
        headings = page.locator("h2").all_inner_texts()
        assert headings == ["Side by side"] * compare + ["Health", "Curves", "Copied mistakes",
                                                         "Layers that predict trouble", "What the weighting did"]
        assert page.locator(".plotly-graph-div").count() >= 8
        if compare:  # the shuffled teacher's fault is in the comparison, next to the clean run
            assert page.get_by_text("no better than chance").count() >= 1
            assert page.locator("h3").all_inner_texts() == runs * 4
        else:
            assert page.get_by_text("no better than chance").count() == 0
            assert page.locator(".cell img").count() >= 1  # copied-mistake images with both predictions
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"report_{'compare' if compare else 'run'}.png"), full_page=True)
    finally:
        page.close()


def test_report_refuses_three_runs(fixture_runs):
    result = kdw("report", fixture_runs.clean.name, fixture_runs.flat.name, fixture_runs.scratch.name,
                 "--runs-dir", fixture_runs.runs_dir, "--output", "/dev/null")
    assert result.returncode == 2 and result.stderr.strip() == "error: report: give one run or two to compare, got 3"


# -- dashboard screenshots for the README -------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _copy_newest(runs: list[Path], target: Path) -> Path:
    """Copy runs into `target`, stamping the first as the newest (the pages show the newest first)."""
    from kd_engine.store import RunWriter

    for run in runs:
        shutil.copytree(run, target / run.name)
    writer = RunWriter(target / runs[0].name, tensorboard=False)
    writer.set_meta(created=time.time() + 60)
    writer.close()
    return target


@pytest.fixture(scope="module")
def served(tmp_path_factory, fixture_runs):
    base = tmp_path_factory.mktemp("diag_served") / "runs"
    _copy_newest([fixture_runs.shuffled, fixture_runs.clean, fixture_runs.scratch], base)
    port = _free_port()
    env = dict(os.environ, KDW_RUNS_DIR=str(base))
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.address",
                               "127.0.0.1", "--server.port", str(port), "--server.headless", "true",
                               "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.3)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "runs": base}
    finally:
        server.terminate()
        server.wait(timeout=20)


def idle(page) -> None:
    for _ in range(2):
        page.wait_for_timeout(800)
        page.wait_for_function(IDLE, timeout=90_000)
    page.wait_for_timeout(800)


def test_dashboard_health_and_copied_mistakes_screenshots(served, browser, fixture_runs):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1300, "height": 1800})
    try:
        page.goto(served["url"])
        idle(page)
        panel = page.locator(".st-key-health_panel")
        # the newest run is the shuffled teacher's
        panel.get_by_text("no better than chance", exact=False).first.wait_for(timeout=60_000)
        page.wait_for_timeout(1000)
        panel.screenshot(path=str(ARTIFACTS / "health.png"))
        page.locator('[data-testid="stSidebarNav"]').get_by_text("Instances", exact=True).click()
        idle(page)
        page.locator('[data-testid="stSidebar"]').get_by_role("combobox").first.click()
        page.get_by_role("option", name=fixture_runs.clean.name).first.click()  # the clean run, control found
        idle(page)
        view = page.locator(".st-key-copied_mistakes")
        view.get_by_text("adopted by the student", exact=False).first.wait_for(timeout=60_000)
        view.scroll_into_view_if_needed()
        idle(page)
        assert view.locator(".js-plotly-plot").count() == 2  # adoption curves and the image gallery
        view.screenshot(path=str(ARTIFACTS / "copied_mistakes.png"))
        assert page.locator('[data-testid="stException"]').count() == 0
    finally:
        page.close()
