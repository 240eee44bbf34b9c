"""Start, stop and resume training runs as `kdw train` subprocesses, never inside Streamlit.

Each launch leaves a record under `<runs_dir>/_launches/` (the config it ran, a JSON record with
the pid, and the process log), so a run that is still starting, or that died before its store
existed, is shown after a browser reload or a server restart. Processes start in their own
session, so they outlive the page that started them.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from kd_engine.checks import check_names
from kd_engine.config import ExperimentConfig, apply_override, resolve_relative_paths, safe_yaml, validate
from kd_engine.errors import ConfigError, KDWError
from kd_engine.search.read import open_search
from kd_engine.store import new_run_id
from kd_engine.store.lock import process_start_time, require_unlocked
from kd_engine.store.schema import DB_NAME
from kd_engine.store.writer import check_run_id

REPO = Path(__file__).resolve().parent.parent
LAUNCH_DIR = "_launches"


def runs_dir() -> Path:
    """The dashboard's runs directory: $KDW_RUNS_DIR, default ./runs."""
    return Path(os.environ.get("KDW_RUNS_DIR", "runs"))


def shipped_configs(root: Path = REPO) -> list[Path]:
    return sorted((root / "configs").glob("*.yaml"))


def parse_yaml(text: str, source: str = "config") -> dict[str, Any]:
    """YAML text to a raw config, with the CLI's one-line messages and alias budget (`load_raw`)."""
    raw = safe_yaml(text, source)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(raw).__name__}")
    return raw


def prepare(text: str, source: str = "config", overrides: list[str] | None = None
            ) -> tuple[dict[str, Any], ExperimentConfig]:
    """Parse, override and validate; raises ConfigError whose text is what `kdw train` prints."""
    raw = parse_yaml(text, source)
    origin = REPO / source  # a shipped config's relative weight paths read from its folder, as in kdw train
    if origin.is_file():
        resolve_relative_paths(raw, origin.resolve().parent)
    for assignment in overrides or []:
        apply_override(raw, assignment)
    cfg = validate(raw, source)
    check_names(cfg)
    return raw, cfg


def cli_error(exc: Exception) -> str:
    """The CLI's rendering of an error: `error: <first line>`."""
    return f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


def _records(base: Path) -> Path:
    path = base / LAUNCH_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def _spawn(command: list[str], base: Path, run_id: str, kind: str, config: str | None) -> dict:
    records = _records(base)
    log_path = records / f"{run_id}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(command)}\n".encode())
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=REPO, env=env, start_new_session=True)
    record = {"run_id": run_id, "pid": proc.pid, "start_time": process_start_time(proc.pid),
              "kind": kind, "started": time.time(),
              "log": str(log_path), "config": config, "command": command}
    (records / f"{run_id}.json").write_text(json.dumps(record))
    return record


def launch(text: str, source: str = "config", overrides: list[str] | None = None,
           base: Path | None = None, run_id: str | None = None) -> dict:
    """Validate and start `kdw train`; returns the launch record (its `run_id` names the run, or
    the search when the config has a search section and names none)."""
    base = Path(base or runs_dir()).resolve()
    raw, cfg = prepare(text, source, overrides)
    run_id = check_run_id(run_id or new_run_id(cfg.name))
    kind = "train" if cfg.search is None else "search"
    if kind == "search" and cfg.search.id is None:  # so the launch can be found among the searches
        raw["search"] = {**(raw.get("search") or {}), "id": run_id}
    config_path = _records(base) / f"{run_id}.yaml"
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    command = [sys.executable, "-m", "kd_engine.cli", "train", str(config_path), "--run-id", run_id,
               "--runs-dir", str(base)]
    return _spawn(command, base, run_id, kind, str(config_path))


def resume(run_id: str, base: Path | None = None) -> dict:
    """Start `kdw train --resume`; refused while a trainer still holds the run's writer lock
    (a paused or slow trainer included), and for a run that has nothing to resume from."""
    base = Path(base or runs_dir()).resolve()
    check_run_id(run_id)
    if not (base / run_id / DB_NAME).is_file():
        raise KDWError(f"run {run_id!r}: not found under {base}")
    require_unlocked(base / run_id)
    if not (base / run_id / "checkpoints" / "state.pt").is_file():
        raise KDWError(f"run {run_id}: no checkpoint to resume from (it ended before its first epoch did)")
    command = [sys.executable, "-m", "kd_engine.cli", "train", "--resume", str(base / run_id),
               "--runs-dir", str(base)]
    return _spawn(command, base, run_id, "resume", None)


def stop(run_id: str, base: Path | None = None) -> str:
    """SIGTERM through `kdw stop` once the run has a store; before that, to the launch itself."""
    base = Path(base or runs_dir()).resolve()
    check_run_id(run_id)
    if (base / run_id / DB_NAME).is_file():
        done = subprocess.run([sys.executable, "-m", "kd_engine.cli", "stop", run_id, "--runs-dir",
                               str(base)], capture_output=True, text=True, cwd=REPO, timeout=60)
        if done.returncode != 0:
            raise KDWError((done.stderr.strip().splitlines() or ["kdw stop failed"])[-1].removeprefix("error: "))
        return done.stdout.strip()
    record = read_record(run_id, base)
    if record is None or not pid_alive(record["pid"]):
        raise KDWError(f"run {run_id} is not running")
    recorded, now = record.get("start_time"), process_start_time(int(record["pid"]))
    if recorded != now:  # the pid now names another process (reused); None == None off Linux
        raise KDWError(f"launch {run_id}: pid {record['pid']} is no longer this launch's process; not signalled")
    os.killpg(int(record["pid"]), signal.SIGTERM)
    return f"sent SIGTERM to launch {run_id}"


def pid_alive(pid: Any) -> bool:
    """Alive and not a zombie; reaps our own finished children so they do not look alive."""
    try:
        pid = int(pid)
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except (ChildProcessError, ValueError, TypeError):
        pass
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def read_record(run_id: str, base: Path | None = None) -> dict | None:
    path = Path(base or runs_dir()) / LAUNCH_DIR / f"{run_id}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def log_tail(run_id: str, base: Path | None = None, lines: int = 30) -> str:
    path = Path(base or runs_dir()) / LAUNCH_DIR / f"{run_id}.log"
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _log_error(text: str) -> str | None:
    found = [line for line in text.splitlines() if line.startswith("error:")]
    if found:
        return found[-1]
    rest = [line for line in text.splitlines() if line.strip() and not line.startswith("$ ")]
    return rest[-1] if rest else None


def _started(record: dict, base: Path) -> bool:
    """The launch has become a run (its store exists) or a search (its directory has a search.json;
    its trials are runs and the Searches page shows it)."""
    if record.get("kind") == "search":
        try:
            open_search(record["run_id"], base)
            return True
        except KDWError:
            return False
    return (base / record["run_id"] / DB_NAME).is_file()


def pending(base: Path | None = None) -> list[dict]:
    """Launches whose run has no store yet: `starting` while the process lives (data, teacher),
    else `failed` with the last `error:` line of its log."""
    base = Path(base or runs_dir())
    out = []
    for path in sorted((base / LAUNCH_DIR).glob("*.json")) if (base / LAUNCH_DIR).is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _started(record, base):
            pid_alive(record.get("pid"))  # reap a finished child
            continue
        alive = pid_alive(record.get("pid"))
        error = None if alive else _log_error(log_tail(record["run_id"], base, 200)) or "exited"
        out.append({**record, "status": "starting" if alive else "failed", "error": error})
    return out
