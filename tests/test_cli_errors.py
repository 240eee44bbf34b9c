"""Malformed configs: `kdw train` prints one `error:` line naming the key or file, exits non-zero,
never prints a traceback, and creates no run."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import PYTHON, REPO, digits_raw, run_dirs, subprocess_env, write_config


def _case(name, overrides=None, *, raw=None, content=None, args=(), needles=()):
    return {"name": name, "overrides": overrides or {}, "raw": raw, "content": content,
            "args": list(args), "needles": list(needles)}


FITNET_NO_ADAPTER = [{"loss": "fitnet", "student_layer": "layer2", "teacher_layer": "layer2",
                      "adapter": "none"}]

# Run as real subprocesses: the acceptance list (and a few file-level cases).
CASES = [
    _case("typo_top_level", {"epohcs": 3}, needles=["'epohcs'", "allowed:", "epochs"]),
    _case("typo_nested", {"optimizer.lrr": 0.1}, needles=["'optimizer.lrr'", "allowed:", "lr"]),
    _case("unknown_method", {"method": "magic"},
          needles=["method", "'magic'", "allowed:", "standard", "scratch"]),
    _case("unknown_student_model", {"student.name": "resnut"},
          needles=["student.name", "'resnut'", "allowed:", "resnet", "mlp", "vit"]),
    _case("unknown_loss", {"distill.terms.0.loss": "kdd"},
          needles=["distill.terms.0.loss", "'kdd'", "allowed:", "kd", "dkd", "fitnet"]),
    _case("negative_epochs", {"epochs": -3}, needles=["epochs", "-3"]),
    _case("wrong_type", {"epochs": "ten"}, needles=["epochs", "'ten'"]),
    _case("missing_teacher_checkpoint", {"teacher.checkpoint": "nope.safetensors"},
          needles=["teacher.checkpoint", "nope.safetensors"]),
    _case("feature_widths_without_adapter", {"distill.terms": FITNET_NO_ADAPTER},
          needles=["distill.terms.0", "layer2", "adapter"]),
    _case("not_yaml", content=b"epochs: 3\ndata: [1, 2\n", needles=["not valid YAML", "{file}"]),
    _case("binary_file", content=bytes(range(256)) * 8, needles=["{file}"]),
    _case("yaml_list", raw=[{"epochs": 3}, {"student": {"name": "resnet"}}],
          needles=["{file}", "mapping", "list"]),
    _case("unknown_weighting", {"weighting.strategy": "fancy"},
          needles=["weighting.strategy", "'fancy'", "allowed:", "uniform", "teacher_confidence"]),
    _case("bad_set_no_equals", args=["--set", "epochs"], needles=["--set", "epochs", "key=value"]),
    _case("missing_config_file", needles=["{file}", "not found"]),
]

# The same contract checked in-process through `kd_engine.cli.main` (cheaper than a process each).
MORE_CASES = [
    _case("typo_in_list", {"distill.terms.0.temprature": 2}, needles=["distill.terms.0.temprature"]),
    _case("unknown_teacher_model", {"teacher.name": "vgg"},
          needles=["teacher.name", "'vgg'", "allowed:", "resnet"]),
    _case("unknown_loss_param", {"distill.terms.0.params": {"temp": 2}},
          needles=["distill.terms.0.params", "'temp'", "temperature"]),
    _case("unknown_model_param", {"student.params.widht": 4},
          needles=["student.params", "'widht'", "width"]),
    _case("wrong_type_nested", {"data.batch_size": "big"}, needles=["data.batch_size", "'big'"]),
    _case("unknown_layer", {"distill.terms": [{"loss": "fitnet", "student_layer": "layer9",
                                               "teacher_layer": "layer2", "adapter": "conv1x1"}]},
          needles=["'layer9'", "layer1", "layer2"]),
    _case("unknown_weighting_param", {"weighting": {"strategy": "teacher_confidence",
                                                   "params": {"sharpness": 2}}},
          needles=["weighting.params", "'sharpness'", "power"]),
    _case("bad_weighting_value", {"weighting": {"strategy": "teacher_confidence",
                                               "params": {"source": "min"}}},
          needles=["weighting.params.source", "'min'", "'max'", "'target'"]),
    _case("bad_set_index", args=["--set", "distill.terms.4.weight=1"],
          needles=["--set", "distill.terms.4.weight"]),
    _case("bad_set_value", args=["--set", "optimizer.lr=-1"], needles=["optimizer.lr", "-1"]),
    _case("unknown_dataset", {"data.name": "mnistt"}, needles=["data.name", "'mnistt'", "digits"]),
    _case("terms_without_teacher", {"teacher": None}, needles=["teacher"]),
    _case("wrong_teacher_checkpoint_spec", {"teacher.params.width": 8, "teacher.checkpoint": "{teacher}"},
          needles=["teacher.checkpoint", "resnet"]),
]


def _write_case(case, folder: Path, cache_dir: Path, teacher_file: Path) -> Path:
    path = folder / "config.yaml"
    if case["content"] is not None:
        path.write_bytes(case["content"])
    elif case["raw"] is not None:
        write_config(path, case["raw"])
    elif case["name"] != "missing_config_file":
        overrides = {k: (str(teacher_file) if v == "{teacher}" else v) for k, v in case["overrides"].items()}
        write_config(path, digits_raw(folder / "runs", cache_dir, overrides))
    return path


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory, teacher_cache):
    """Run every case as `python -m kd_engine.cli train FILE`, two at a time (two cores)."""
    root = tmp_path_factory.mktemp("cli_errors")
    pending, running, results = list(CASES), [], {}
    while pending or running:
        while pending and len(running) < 2:
            case = pending.pop(0)
            folder = root / case["name"]
            folder.mkdir()
            path = _write_case(case, folder, teacher_cache.cache_dir, teacher_cache.path)
            command = [PYTHON, "-m", "kd_engine.cli", "train", str(path), *case["args"],
                       "--runs-dir", str(folder / "runs")]
            proc = subprocess.Popen(command, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, errors="replace")
            running.append((case["name"], folder, path, proc))
        name, folder, path, proc = running.pop(0)
        try:
            stdout, stderr = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        results[name] = (folder, path, proc.returncode, stdout, stderr)
    return results


def _check_one_line(case, folder, path, returncode, stdout, stderr):
    assert returncode != 0, stdout + stderr
    assert "Traceback" not in stderr and "Traceback" not in stdout
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in case["needles"]:
        needle = needle.replace("{file}", str(path))
        assert needle in line, f"{needle!r} not in {line!r}"
    # a rejected config leaves nothing behind: no run directory, no half-trained teacher
    assert run_dirs(Path(folder) / "runs") == []


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_malformed_config_gives_one_line_error(cli_results, case):
    _check_one_line(case, *cli_results[case["name"]])


@pytest.mark.parametrize("case", MORE_CASES, ids=[c["name"] for c in MORE_CASES])
def test_more_malformed_configs_in_process(tmp_path, teacher_cache, capsys, case):
    from kd_engine.cli import main

    path = _write_case(case, tmp_path, teacher_cache.cache_dir, teacher_cache.path)
    returncode = main(["train", str(path), *case["args"], "--runs-dir", str(tmp_path / "runs")])
    out = capsys.readouterr()
    assert returncode == 2
    _check_one_line(case, tmp_path, path, returncode, out.out, out.err)


def test_resume_errors_are_one_line(tmp_path, capsys):
    from kd_engine.cli import main

    assert main(["train", "--resume", "nope", "--runs-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: run 'nope': not found under {tmp_path}"
    assert main(["train", "c.yaml", "--resume", "nope"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert capsys.readouterr().err.startswith("error: train: give a CONFIG")


def test_all_ten_required_kinds_are_covered():
    names = {c["name"] for c in CASES}
    assert {"typo_top_level", "typo_nested", "unknown_method", "unknown_student_model", "unknown_loss",
            "negative_epochs", "wrong_type", "missing_teacher_checkpoint",
            "feature_widths_without_adapter", "not_yaml", "yaml_list", "unknown_weighting",
            "bad_set_no_equals"} <= names


def test_config_errors_come_before_teacher_training(tmp_path, capsys):
    """A mistake in the distillation part of a config is reported before a teacher is trained
    (which can take minutes): no teacher run, no cache entry, one error line."""
    from kd_engine.cli import main

    cache = tmp_path / "cache"
    overrides = {"distill.terms": [{"loss": "kd"}, {"loss": "fitnet", "student_layer": "layer2",
                                                     "teacher_layer": "layer2"}]}
    path = write_config(tmp_path / "c.yaml", digits_raw(tmp_path / "runs", cache, overrides))
    assert main(["train", str(path)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: distill.terms.1: "), lines
    assert run_dirs(tmp_path / "runs") == []
    assert not list(cache.glob("teachers/*"))
