"""Run integrity on the dashboard: a damaged run leaves every page usable, a live (even paused)
trainer is never offered Resume, and a started dashboard refuses a foreign Host header."""
from __future__ import annotations

import base64
import os
import socket
import subprocess
import time

import pytest
from streamlit.testing.v1 import AppTest

from conftest import PYTHON, REPO, subprocess_env
from conftest_dashboard import build_run
from integrity_runs import Holder, set_raw_meta
from kd_engine.host_check import allowed_hosts, host_allowed
from kd_engine.errors import KDWError
from workbench import launcher

PAGES = ["runs", "curves", "instances", "features", "attention", "compare", "roles", "search", "methods"]
GOOD = "20260101-000100-fixture_kd-good"


def open_app(runs_dir, monkeypatch, run_id=None) -> AppTest:
    monkeypatch.setenv("KDW_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
    if run_id:
        at.session_state["kdw_run"] = run_id
    return at.run()


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def test_one_run_with_bad_metadata_leaves_every_page_usable(tmp_path, monkeypatch):
    base = tmp_path / "runs"
    build_run(base, GOOD)
    set_raw_meta(build_run(base, "20260101-000200-fixture_kd-soon"), heartbeat='"soon"', status='"running"')
    set_raw_meta(build_run(base, "20260101-000300-fixture_kd-json"), status="{broken")
    at = open_app(base, monkeypatch, run_id=GOOD)
    for name in PAGES:
        at.switch_page(f"workbench/pages/{name}.py").run()
        assert not at.exception, (name, [e.value for e in at.exception])
        assert "Unexpected error" not in texts(at.error), (name, texts(at.error))
        if name == "runs":
            table = at.dataframe[0].value.set_index("run_id")
            assert table.loc[GOOD, "status"] == "✓ finished"
            assert table.loc["20260101-000200-fixture_kd-soon", "status"] == "✗ corrupt"
            assert "'heartbeat' is not a number" in texts(at.error)
            assert "'status' is not valid JSON" in texts(at.error)
    at.switch_page("workbench/pages/curves.py").run()
    assert at.get("plotly_chart"), "the healthy run's curves are drawn"


def test_a_live_trainer_is_never_offered_resume(tmp_path, monkeypatch):
    base = tmp_path / "runs"
    run_dir = build_run(base, GOOD, status="running")
    (run_dir / "checkpoints" / "state.pt").write_bytes(b"x")  # something to resume from
    holder = Holder(run_dir, status="running")
    try:
        set_raw_meta(run_dir, heartbeat=str(time.time() - 600))  # paused (SIGSTOP) for ten minutes
        monkeypatch.setattr(launcher, "_spawn", lambda *a: pytest.fail("a live run was resumed"))
        at = open_app(base, monkeypatch, run_id=GOOD)
        assert at.dataframe[0].value.set_index("run_id").loc[GOOD, "status"] == "◌ not responding"
        buttons = {b.label: b for b in at.button}
        assert buttons["Resume"].disabled and not buttons["Stop"].disabled
        assert "not sent a heartbeat recently" in texts(at.warning)
        with pytest.raises(KDWError, match="being written by another live trainer"):
            launcher.resume(GOOD, base)
        assert holder.alive()
    finally:
        holder.end()


def test_stop_button_does_not_signal_a_foreign_pid(tmp_path, monkeypatch):
    base = tmp_path / "runs"
    run_dir = build_run(base, GOOD)
    victim = subprocess.Popen(["sleep", "120"])
    try:
        set_raw_meta(run_dir, status='"running"', heartbeat="4000000000.0", pid=str(victim.pid))
        with pytest.raises(KDWError, match="stale, not running"):
            launcher.stop(GOOD, base)
        time.sleep(0.3)
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_host_allow_list():
    allowed = allowed_hosts("127.0.0.1")
    assert host_allowed("127.0.0.1:8501", allowed) and host_allowed("localhost:8501", allowed)
    assert host_allowed("[::1]:8501", allowed)
    for bad in ("evil.example:8501", "127.0.0.1.evil.example", "user@127.0.0.1", "127.0.0.1:x", "", None):
        assert not host_allowed(bad, allowed), bad
    assert host_allowed("10.0.0.5:80", allowed_hosts("10.0.0.5"))  # the address it was asked to serve
    assert host_allowed("proxy.example", allowed_hosts("127.0.0.1", ["proxy.example"]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _upgrade(port: int, host: str) -> str:
    """The status line of a WebSocket upgrade of the dashboard's session stream."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n"
               f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request.encode())
        return s.recv(200).decode(errors="replace").splitlines()[0]


def test_started_dashboard_refuses_a_foreign_host(tmp_path):
    """DNS rebinding sends the attacker's name as Host (and Origin) to 127.0.0.1."""
    port = _free_port()
    server = subprocess.Popen([PYTHON, "-m", "kd_engine.cli", "dashboard", "--no-browser", "--port", str(port),
                               "--runs-dir", str(tmp_path / "runs"), "--allow-host", "proxy.example"],
                              cwd=tmp_path, env=subprocess_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                first = _upgrade(port, f"127.0.0.1:{port}")
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "the dashboard did not start"
                time.sleep(0.5)
        assert "101" in first
        assert "101" in _upgrade(port, f"localhost:{port}")
        assert "101" in _upgrade(port, "proxy.example")  # named with --allow-host
        assert "403" in _upgrade(port, f"evil.example:{port}")
        assert "403" in _upgrade(port, f"127.0.0.1.evil.example:{port}")
    finally:
        os.killpg(server.pid, 15)  # the kdw process and the streamlit server it started
        server.wait(timeout=30)
