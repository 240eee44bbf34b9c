"""Run integrity from the command line: one writer per run, a Stop that can only stop the run's own
trainer, a listing that survives one damaged run, and hostile or unusual inputs refused in one line.

Each test reproduces a finding of the reliability review on real (tiny) runs and `kdw` processes.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from conftest import PYTHON, REPO, kdw, subprocess_env, write_config
from integrity_runs import Holder, copy_run, set_raw_meta, tiny_raw, tiny_run, train_rows  # noqa: F401
from kd_engine.store import list_runs, open_run


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, done.stderr
    return lines[0]


# -- 1. one writer per run --------------------------------------------------------------------
def test_resume_is_refused_while_a_trainer_holds_the_run(tiny_run, tmp_path):
    runs = tmp_path / "runs"
    run_dir = copy_run(tiny_run, runs, "live", epochs=2)  # resumable: one more epoch to train
    before = train_rows(run_dir)
    holder = Holder(run_dir, status="running")
    try:
        assert open_run(run_dir).status() == "running"
        message = one_line_error(kdw("train", "--resume", "live", "--runs-dir", runs))
        assert "being written by another live trainer" in message and str(holder.process.pid) in message
        # a second trainer given the same id is refused as well (the store exists)
        config = write_config(tmp_path / "tiny.yaml", tiny_raw(runs))
        message = one_line_error(kdw("train", config, "--run-id", "live", "--runs-dir", runs))
        assert "already exists" in message
        assert holder.alive()
    finally:
        holder.end()
    assert train_rows(run_dir) == before  # nothing was written twice
    assert open_run(run_dir).status() == "stale"  # the holder died without a final status


def test_a_paused_trainer_is_not_responding_never_stale(tiny_run, tmp_path):
    runs = tmp_path / "runs"
    run_dir = copy_run(tiny_run, runs, "paused", epochs=2)
    holder = Holder(run_dir, status="running")
    try:
        set_raw_meta(run_dir, heartbeat=str(time.time() - 3600))  # silent for an hour
        assert open_run(run_dir).status() == "not responding"
        set_raw_meta(run_dir, heartbeat="4000000000.0")  # a heartbeat in the future is suspect
        assert open_run(run_dir).status() == "not responding"
        assert list_runs(runs).set_index("run_id").loc["paused", "status"] == "not responding"
    finally:
        holder.end()
    assert open_run(run_dir).status() == "stale"  # the lock is free now: only now resumable


def test_two_writers_cannot_open_one_run(tmp_path):
    from kd_engine.store import RunWriter
    from kd_engine.store.lock import RunBusyError

    first = RunWriter.create(tmp_path, "exp", {"method": "standard"}, "name: exp\n", run_id="r1",
                             tensorboard=False)
    with pytest.raises(RunBusyError, match="another live trainer"):
        RunWriter(tmp_path / "r1", tensorboard=False)
    with pytest.raises(RunBusyError):
        RunWriter.create(tmp_path, "exp", {}, "name: exp\n", run_id="r1", tensorboard=False)
    first.close()
    second = RunWriter(tmp_path / "r1", tensorboard=False)  # free again once the first closed
    second.close()


def test_checkpoint_temporary_files_are_unique_per_writer(tmp_path, monkeypatch):
    import torch

    from kd_engine.trainers import checkpoint

    seen = []
    monkeypatch.setattr(checkpoint.torch, "save", lambda state, path: (seen.append(path), open(path, "wb").close()))
    checkpoint.save_state(tmp_path / "state.pt", {"w": torch.zeros(3)})
    assert seen[0].name == f"state.pt.{os.getpid()}.tmp"
    assert (tmp_path / "state.pt").is_file() and not seen[0].exists()


# -- 2. Stop stops only the run's own trainer ---------------------------------------------------
def crafted_running(tiny_run, runs, run_id, pid, **extra):
    run_dir = copy_run(tiny_run, runs, run_id)
    set_raw_meta(run_dir, status='"running"', heartbeat="4000000000.0", pid=str(pid), **extra)
    return run_dir


def test_stop_refuses_a_foreign_pid_and_the_process_lives(tiny_run, tmp_path):
    runs = tmp_path / "runs"
    victim = subprocess.Popen(["sleep", "120"])
    try:
        crafted_running(tiny_run, runs, "fake", victim.pid)
        assert open_run(runs / "fake").status() == "stale"  # no trainer holds the lock
        message = one_line_error(kdw("stop", "fake", "--runs-dir", runs))
        assert "fake is stale" in message
        # a forged lock file naming the victim changes nothing: nobody holds the lock
        (runs / "fake" / "writer.lock").write_text(f'{{"pid": {victim.pid}, "host": "x", "start_time": 1}}')
        one_line_error(kdw("stop", "fake", "--runs-dir", runs))
        crafted_running(tiny_run, runs, "elsewhere", victim.pid, host='"build-42.example"')
        holder = Holder(runs / "elsewhere")  # even while something holds its lock here
        try:
            message = one_line_error(kdw("stop", "elsewhere", "--runs-dir", runs))
            assert "host 'build-42.example'" in message and "not on this host" in message
            assert holder.alive()
        finally:
            holder.end()
        time.sleep(0.3)
        assert victim.poll() is None, "kdw stop signalled an unrelated process"
    finally:
        victim.kill()
        victim.wait()


def test_stop_refuses_a_reused_pid_and_stops_the_real_trainer(tiny_run, tmp_path):
    runs = tmp_path / "runs"
    run_dir = copy_run(tiny_run, runs, "live", epochs=2)
    holder = Holder(run_dir, status="running")
    try:
        lock = (run_dir / "writer.lock").read_text()
        # the trainer's lock names it with its start time; another start time is another process
        (run_dir / "writer.lock").write_text(lock.replace('"start_time": ', '"start_time": 1'))
        message = one_line_error(kdw("stop", "live", "--runs-dir", runs))
        assert "not the process that started the run" in message and holder.alive()
        (run_dir / "writer.lock").write_text(lock)
        done = kdw("stop", "live", "--runs-dir", runs)
        assert done.returncode == 0 and f"pid {holder.process.pid}" in done.stdout, done.stderr
        holder.process.wait(timeout=30)
        assert holder.process.returncode == -signal.SIGTERM
    finally:
        holder.end()


# -- 3. one damaged run does not hide the others ------------------------------------------------
def test_bad_metadata_in_one_run_of_three(tiny_run, tmp_path):
    runs = tmp_path / "runs"
    copy_run(tiny_run, runs, "good")
    set_raw_meta(copy_run(tiny_run, runs, "soon"), heartbeat='"soon"', status='"running"')
    set_raw_meta(copy_run(tiny_run, runs, "broken"), status="{broken")
    set_raw_meta(copy_run(tiny_run, runs, "badcfg"), config='"epochs: [1"')
    frame = list_runs(runs).set_index("run_id")
    assert frame.loc["good", "status"] == "finished"
    assert frame.loc["soon", "status"] == "corrupt" and "'heartbeat' is not a number" in frame.loc["soon", "error"]
    assert frame.loc["broken", "status"] == "corrupt" and "'status' is not valid JSON" in frame.loc["broken", "error"]
    listing = kdw("runs", "--runs-dir", runs)
    assert listing.returncode == 0 and "Traceback" not in listing.stderr
    assert "good" in listing.stdout and "corrupt" in listing.stdout
    assert kdw("show", "good", "--runs-dir", runs).returncode == 0
    assert '"status": "finished"' in kdw("show", "good", "--json", "--runs-dir", runs).stdout
    assert "is not a number" in one_line_error(kdw("show", "soon", "--runs-dir", runs))
    assert "not valid JSON" in one_line_error(kdw("show", "broken", "--runs-dir", runs))
    assert "stored config: not valid YAML" in one_line_error(kdw("show", "badcfg", "--json", "--runs-dir", runs))


def test_show_into_a_closed_pipe_is_quiet(tiny_run, tmp_path):
    runs = tmp_path / "runs"
    copy_run(tiny_run, runs, "good")
    read, write = os.pipe()
    os.close(read)  # like `kdw show good | head` once head has exited
    done = subprocess.run([PYTHON, "-m", "kd_engine.cli", "show", "good", "--runs-dir", str(runs)],
                          stdout=write, stderr=subprocess.PIPE, text=True, cwd=REPO, env=subprocess_env(),
                          timeout=120)
    os.close(write)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


# -- 4. inputs ------------------------------------------------------------------------------------
BOMB = """name: bomb
method: scratch
student: {name: resnet}
tags:
  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
  e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
  f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
  g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
  h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
  i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_yaml_alias_bomb_is_refused_in_one_line(tmp_path, capsys):
    from kd_engine.cli import main
    from kd_engine.config import ConfigError, load_config, safe_yaml
    from workbench import launcher

    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    started = time.perf_counter()
    assert main(["train", str(path), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: refused: anchors and aliases expand it") and "\n" not in err
    with pytest.raises(ConfigError, match="refused"):
        launcher.prepare(BOMB, "dashboard")  # what the dashboard's launch form runs
    plain = tmp_path / "plain.yaml"
    write_config(plain, tiny_raw(tmp_path / "runs"))
    bomb_value = "{a: &a [1,1,1,1,1,1,1,1,1,1], b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], " \
                 "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], d: [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]}"
    with pytest.raises(ConfigError, match="--set tags: refused"):
        load_config(plain, [f"tags={bomb_value}"])
    assert time.perf_counter() - started < 10
    # an ordinary anchor and alias still work, and a self-referencing alias is refused
    assert safe_yaml("a: &x [1, 2]\nb: *x") == {"a": [1, 2], "b": [1, 2]}
    with pytest.raises(ConfigError, match="refers to the mapping or list that contains it"):
        safe_yaml("a: &x [1, *x]")


@pytest.mark.parametrize("run_id", ["../escaped", "..", ".", "a/b", "<absolute>", ".hidden", "x" * 129])
def test_run_ids_must_be_plain_names(tmp_path, capsys, run_id):
    if run_id == "<absolute>":
        run_id = str(tmp_path / "outside" / "abs-run")
    from kd_engine.cli import main
    from kd_engine.config import ConfigError
    from kd_engine.store import RunWriter
    from workbench import launcher

    runs = tmp_path / "inner" / "runs"
    config = write_config(tmp_path / "tiny.yaml", tiny_raw(runs))
    assert main(["train", str(config), "--run-id", run_id, "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --run-id: ") and "is not a valid run id" in err and "\n" not in err
    with pytest.raises(ConfigError, match="not a valid run id"):
        RunWriter.create(runs, "tiny", {}, "name: tiny\n", run_id=run_id, tensorboard=False)
    for call in (lambda: launcher.launch(config.read_text(), base=runs, run_id=run_id),
                 lambda: launcher.resume(run_id, runs), lambda: launcher.stop(run_id, runs)):
        with pytest.raises(ConfigError, match="not a valid run id"):
            call()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["tiny.yaml"]  # nothing was written


def test_existing_run_id_and_huge_seed_are_one_line(tiny_run, tmp_path):
    runs = tmp_path / "runs"
    copy_run(tiny_run, runs, "taken")
    config = write_config(tmp_path / "tiny.yaml", tiny_raw(runs))
    message = one_line_error(kdw("train", config, "--run-id", "taken", "--runs-dir", runs))
    assert "a run with this id already exists" in message
    for seed in (2**64 + 1, -1):
        message = one_line_error(kdw("train", config, "--set", f"seed={seed}", "--runs-dir", runs))
        assert message.startswith(f"error: {config}: seed: ") and str(seed) in message


def test_coco_box_of_401_digits_is_one_line(tmp_path):
    import json

    from kd_engine.data.detection.coco import load_coco
    from kd_engine.errors import DataError

    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}],
            "categories": [{"id": 1, "name": "thing"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10**400, 4]}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(DataError, match="bbox must be \\[x, y, width, height\\] of 4 finite numbers"):
        load_coco(path, tmp_path, check_images=False)
    path.write_text(json.dumps(coco).replace(str(10**400), "9" * 5001))
    with pytest.raises(DataError, match="not readable JSON"):
        load_coco(path, tmp_path, check_images=False)


def test_a_full_disk_during_set_up_marks_the_run_failed(tmp_path, capsys, monkeypatch):
    """The image bank is written while the run is set up, before the first epoch: a full disk
    there is one line and a failed run, not a traceback and a run left 'running'."""
    import errno

    import numpy as np

    from kd_engine.cli import main

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    config = write_config(tmp_path / "tiny.yaml", tiny_raw(tmp_path / "runs"))
    assert main(["train", str(config), "--run-id", "setup"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"error: {tmp_path / 'runs' / 'setup' / 'artifacts'}")
    assert "no space left on device" in err
    run = open_run(tmp_path / "runs" / "setup")
    assert run.status() == "failed" and "no space left on device" in run.meta()["error"]
