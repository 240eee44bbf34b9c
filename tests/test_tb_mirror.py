"""The TensorBoard mirror: a separate process that copies the store's scalars into event files."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kd_engine.store import RunWriter, open_run
from kd_engine.store import schema, tb_mirror


def tb_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def store_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    frame = open_run(run_dir.name, run_dir.parent).scalars()
    return {key: list(zip(group["step"].tolist(), group["value"].tolist()))
            for key, group in frame.groupby("key", sort=True)}


def write_steps(writer: RunWriter, steps: range, epoch: int) -> None:
    for step in steps:
        writer.log_scalars(step, epoch, {"train/loss": 1.0 / (step + 1), "lr": 0.1 + step})
        if step % 7 == 0:
            writer.flush()
    writer.flush()


def test_the_mirror_holds_every_scalar_of_the_store(tmp_path):
    writer = RunWriter.create(tmp_path, "exp", {"method": "standard"}, "name: exp\n", run_id="r1")
    write_steps(writer, range(30), epoch=0)
    writer.close()  # waits for the mirror's last pass
    run_dir = tmp_path / "r1"
    mirrored = tb_scalars(run_dir)
    assert set(mirrored) == {"train/loss", "lr"}
    for key, rows in store_scalars(run_dir).items():
        assert [s for s, _ in mirrored[key]] == [s for s, _ in rows]
        assert all(abs(a - b) < 1e-6 for (_, a), (_, b) in zip(mirrored[key], rows)), key


def test_a_resumed_run_replaces_the_steps_it_trains_again(tmp_path):
    writer = RunWriter.create(tmp_path, "exp", {"method": "standard"}, "name: exp\n", run_id="r1")
    write_steps(writer, range(0, 10), epoch=0)
    write_steps(writer, range(10, 20), epoch=1)
    writer.close()
    resumed = RunWriter(tmp_path / "r1")
    resumed.truncate_from_epoch(1)  # epoch 1 is trained again, with other values
    for step in range(10, 20):
        resumed.log_scalars(step, 1, {"train/loss": -1.0, "lr": -1.0})
    resumed.flush()
    resumed.close()
    loss = tb_scalars(tmp_path / "r1")["train/loss"]  # TensorBoard honours the purge step
    assert [step for step, _ in loss] == list(range(20))  # epoch 1's first values are gone
    assert [value for _, value in loss[10:]] == [-1.0] * 10 and loss[0][1] == 1.0


def test_no_tensorboard_no_mirror(tmp_path):
    writer = RunWriter.create(tmp_path, "exp", {}, "name: exp\n", run_id="r1", tensorboard=False)
    write_steps(writer, range(5), epoch=0)
    writer.close()
    assert not (tmp_path / "r1" / "tb").exists()


def test_the_mirror_exits_when_its_trainer_is_gone(tmp_path):
    """However the trainer dies (here SIGKILL), its end of the pipe closes: one last pass, exit."""
    writer = RunWriter.create(tmp_path, "exp", {}, "name: exp\n", run_id="r1", tensorboard=False)
    write_steps(writer, range(5), epoch=0)
    writer.close()
    trainer = subprocess.Popen([sys.executable, "-c", f"""
import subprocess, sys, time
subprocess.Popen([sys.executable, {tb_mirror.__file__!r}, {str(tmp_path / "r1")!r}], stdin=subprocess.PIPE)
time.sleep(60)
"""])
    time.sleep(2.0)
    os.kill(trainer.pid, signal.SIGKILL)
    trainer.wait()
    deadline = time.time() + 30
    while time.time() < deadline and len(tb_scalars(tmp_path / "r1").get("lr", [])) < 5:
        time.sleep(0.2)
    assert len(tb_scalars(tmp_path / "r1")["lr"]) == 5


def test_the_script_names_the_store_file_as_the_schema_does():
    assert tb_mirror.DB_NAME == schema.DB_NAME


def test_the_mirror_runs_below_the_trainers_priority(tmp_path):
    """The mirror only uses idle CPU: its process is niced below the trainer's."""
    writer = RunWriter.create(tmp_path, "exp", {"method": "standard"}, "name: exp\n", run_id="r1")
    try:
        write_steps(writer, range(3), epoch=0)
        pid = writer._tb.process.pid
        deadline = time.time() + 20
        while os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0) and time.time() < deadline:
            time.sleep(0.05)  # it renices itself as it starts
        assert os.getpriority(os.PRIO_PROCESS, pid) >= os.getpriority(os.PRIO_PROCESS, 0) + min(
            tb_mirror.NICENESS, 19 - os.getpriority(os.PRIO_PROCESS, 0))
    finally:
        writer.close()
