"""The import contracts in pyproject.toml hold: no import cycle between sibling modules anywhere in
kd_engine, the engine's layers import only downwards, the trainer imports no orchestration, and
the engine never imports the dashboard (import-linter's `lint-imports`)."""
from __future__ import annotations

import subprocess

from conftest import BIN, REPO, subprocess_env


def test_import_contracts_are_kept():
    result = subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=REPO, env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
