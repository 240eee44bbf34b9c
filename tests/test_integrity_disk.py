"""A full disk, on a real small tmpfs (in a private mount namespace, so nothing outside the test
sees it): one line naming the path and the space needed, status `failed`, and the run resumable
from its last complete checkpoint once space is freed."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import PYTHON, REPO, subprocess_env, write_config
from integrity_runs import tiny_raw


def _namespace_tmpfs_works() -> str | None:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return "needs Linux and unshare(1)"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d"],
                           capture_output=True, text=True)
    return None if probe.returncode == 0 else f"cannot mount a tmpfs in a private namespace: {probe.stderr.strip()}"


SKIP = _namespace_tmpfs_works()
pytestmark = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")


def in_small_tmpfs(tmp_path, size: str, script: str) -> str:
    """Run `script` (sh) with $D a fresh tmpfs of `size`, private to this call; returns stdout+stderr."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    body = f"set -u\nD={mount}\nmount -t tmpfs -o size={size} tmpfs $D\n" + textwrap.dedent(script)
    done = subprocess.run(["unshare", "-m", "sh", "-c", body], capture_output=True, text=True, cwd=REPO,
                          env=subprocess_env(), timeout=600)
    return done.stdout + done.stderr


def test_disk_full_during_training_is_one_line_and_resumable(tmp_path):
    config = write_config(tmp_path / "tiny.yaml", tiny_raw(tmp_path / "unused", epochs=3))
    out = in_small_tmpfs(tmp_path, "1600k", f"""
        K="{PYTHON} -m kd_engine.cli"
        $K train {config} --runs-dir $D/runs --run-id full; echo "train rc=$?"
        $K show full --runs-dir $D/runs | head -1
        mount -o remount,size=30m $D
        $K train --resume full --runs-dir $D/runs >/dev/null 2>&1; echo "resume rc=$?"
        $K show full --runs-dir $D/runs | head -1
    """)
    assert "Traceback" not in out and "iostream" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out
    assert "no space left on device (the write needs about" in errors[0] and "/runs/full/" in errors[0]
    assert "train rc=2" in out and "run       full  [failed]" in out
    assert "resume rc=0" in out and "run       full  [finished]" in out, out


def test_store_writes_on_a_full_disk_still_record_failed(tmp_path):
    """SQLite's "database or disk is full" becomes one DiskFullError; the writer frees its reserve
    so the failed status is still written."""
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from kd_engine.store import RunWriter, open_run
        from kd_engine.store.space import DiskFullError
        w = RunWriter.create(sys.argv[1], "x", {}, "name: x\\n", run_id="r", tensorboard=False)
        try:
            for epoch in range(10_000):
                w.log_instances({"epoch": np.full(500, epoch), "instance_id": np.arange(500),
                                 "student_loss": np.random.rand(500)})
        except DiskFullError as exc:
            print("caught:", exc)
            w.set_status("failed", error=str(exc))
        print("status:", open_run(sys.argv[1] + "/r").status())
    """)
    out = in_small_tmpfs(tmp_path, "700k", f'{PYTHON} -c \'{code}\' $D/runs')
    assert "Traceback" not in out, out
    assert "caught: " in out and "/runs/r/store.sqlite: no space left on device" in out, out
    assert "status: failed" in out, out
