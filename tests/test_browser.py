"""The dashboard in a real browser: `streamlit run` headless on 127.0.0.1, driven by Playwright
with Debian's chromium. Launches a run from the Runs page, watches its curve grow on Curves,
stops it, opens every page, and saves a screenshot of each under artifacts/screenshots/."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "artifacts" / "screenshots"
PAGES = ["Runs", "Curves", "Instances", "Features", "Attention", "Compare", "Methods"]
IDLE = ("() => !document.querySelector('[data-testid=\"stStatusWidget\"], [data-testid=\"stSkeleton\"], "
        "[data-testid=\"stSpinner\"]')")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                      "(apt-get install chromium)"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _teacher_overrides(cache: Path) -> list[str]:
    return ["teacher.train.epochs=2", f"cache_dir={cache}", "threads=1", "device=cpu"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A runs directory seeded with one real finished run, and the app serving it."""
    base = tmp_path_factory.mktemp("browser")
    runs, cache = base / "runs", base / "cache"
    subprocess.run([sys.executable, "-m", "kd_engine.cli", "train", "configs/digits_kd.yaml", "--runs-dir",
                    str(runs), "--set", "epochs=2", "--set", "weighting.strategy=teacher_confidence",
                    "--set", "weighting.params={source: target, power: 2.0}", *sum((["--set", o] for o in _teacher_overrides(cache)), [])],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    port = _free_port()
    env = dict(os.environ, KDW_RUNS_DIR=str(runs))
    log = open(base / "streamlit.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.address",
                               "127.0.0.1", "--server.port", str(port), "--server.headless", "true",
                               "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.3)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "runs": runs, "cache": cache}
    finally:
        for record in (runs / "_launches").glob("*.json"):  # never leave a trainer behind
            pid = json.loads(record.read_text())["pid"]
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        server.terminate()
        server.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--no-sandbox", "--enable-unsafe-swiftshader", "--disable-gpu", "--disable-background-networking"])
        yield chromium
        chromium.close()


def idle(page, settle_ms: int = 800) -> None:
    """Wait until the script run, its spinners and lazy placeholders are done (twice, since a
    rerun can start right after the first one ends)."""
    for _ in range(2):
        page.wait_for_timeout(settle_ms)
        page.wait_for_function(IDLE, timeout=90_000)
    page.wait_for_timeout(800)


def goto(page, name: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_text(name, exact=True).click()
    idle(page)


def no_exception(page, where: str) -> None:
    boxes = page.locator('[data-testid="stException"]')
    assert boxes.count() == 0, f"{where}: {boxes.first.inner_text()}"


def curve_points(page, run_id: str) -> int:
    caption = page.locator('[data-testid="stCaptionContainer"]', has_text=f"{run_id}:").first
    found = re.search(r"(\d+) points", caption.inner_text(timeout=30_000))
    return int(found.group(1)) if found else 0


def run_state(runs: Path, run_id: str) -> str:
    """What the run and its launch say, for a failure message: status, error, the log's tail."""
    from kd_engine.store import open_run

    try:
        meta = open_run(run_id, runs).meta()
        state = f"status {open_run(run_id, runs).status()!r}, error {meta.get('error')!r}"
    except Exception as exc:  # noqa: BLE001 - a diagnostic must not hide the assertion
        state = f"store unreadable: {exc}"
    logs = sorted((runs / "_launches").glob(f"{run_id}*.log"))
    tail = logs[0].read_text(errors="replace").splitlines()[-8:] if logs else ["(no launch log)"]
    return state + "; launch log tail: " + " | ".join(tail)


def test_every_page_renders_and_is_screenshotted(served, browser):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 2600})
    page.goto(served["url"])
    idle(page)
    # the seeded run; the first script run also imports the engine's read side, so wait for it
    page.get_by_text(re.compile(r"\d+ finished")).first.wait_for(timeout=60_000)
    for name in PAGES:
        goto(page, name)
        no_exception(page, name)
        assert page.get_by_role("heading", name=name).first.is_visible()
        page.screenshot(path=str(SHOTS / f"{name.lower()}.png"), full_page=True)
    goto(page, "Attention")
    assert page.get_by_text("Agreement (Pearson)").first.is_visible()
    page.close()


def test_launch_watch_live_curve_and_stop(served, browser):
    cache = served["cache"]
    config = (REPO / "configs" / "digits_kd.yaml").read_text()
    # 400 epochs: still training when the test stops it, however fast or loaded the machine is
    config = config.replace("name: digits_kd", "name: browser_live").replace("epochs: 15", "epochs: 400")
    config = config.replace("train: {epochs: 20, optimizer: {lr: 0.05}}", "train: {epochs: 2, optimizer: {lr: 0.05}}")
    config += f"cache_dir: {cache}\nthreads: 1\ndevice: cpu\nrecord: {{attention_maps: 4}}\n"
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    page.goto(served["url"])
    idle(page)
    page.locator("textarea").first.fill(config)
    page.get_by_role("button", name="Launch run").click()
    success = page.get_by_text("Launched run", exact=False).first
    success.wait_for(timeout=30_000)
    run_id = re.search(r"Launched run (\S+)", success.inner_text()).group(1)
    # the run appears in the table once its store exists (the table refreshes itself)
    page.locator('[data-testid="stDataFrame"]').first.wait_for()
    deadline = time.time() + 90
    while time.time() < deadline and not (served["runs"] / run_id / "store.sqlite").is_file():
        time.sleep(0.5)
    assert (served["runs"] / run_id / "store.sqlite").is_file(), run_state(served["runs"], run_id)
    goto(page, "Curves")
    no_exception(page, "Curves (live)")
    first = curve_points(page, run_id)
    grown, deadline = first, time.time() + 60
    while grown <= first and time.time() < deadline:
        page.wait_for_timeout(1000)  # the live fragment refreshes on its own; no reload
        grown = curve_points(page, run_id)
    assert grown > first, f"the live curve did not grow past {first} points; {run_state(served['runs'], run_id)}"
    page.screenshot(path=str(SHOTS / "curves_live.png"), full_page=True)
    goto(page, "Runs")
    page.get_by_role("button", name="Stop").click()
    page.get_by_text("sent SIGTERM", exact=False).first.wait_for(timeout=60_000)
    deadline = time.time() + 60
    from kd_engine.store import open_run

    while time.time() < deadline and open_run(run_id, served["runs"]).status() == "running":
        time.sleep(0.5)
    assert open_run(run_id, served["runs"]).status() == "stopped"
    page.close()


def test_dense_run_pages_are_screenshotted(served, browser):
    """A tiny dense run (seg_digits_kd) on Instances, Features and Compare: its probe image with
    true, teacher and student masks and the disparity map."""
    from kd_engine.config import load_config
    from kd_engine.run import train

    cfg = load_config(REPO / "configs" / "seg_digits_kd.yaml", [
        f"runs_dir={served['runs']}", "epochs=2", "data.params={n_train: 60, n_val: 10, n_test: 10}",
        "teacher.params.width=8", "student.params.width=4", "record.tensorboard=false",
        *_teacher_overrides(served["cache"])])
    run_id = train(cfg).name
    page = browser.new_page(viewport={"width": 1400, "height": 2400})
    page.goto(served["url"])
    idle(page)
    for name in ("Instances", "Features", "Compare"):
        goto(page, name)
        page.get_by_text("Probe image (test split, highest disparity first)").first.wait_for(timeout=90_000)
        idle(page)
        page.screenshot(path=str(SHOTS / f"dense_{name.lower()}.png"), full_page=True)
        no_exception(page, f"{name} (dense)")
        assert page.get_by_text(run_id).count()  # the newest finished run is the one shown
    page.close()
