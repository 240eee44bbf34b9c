"""environment.yml (conda users) and pyproject.toml (make, pip) must pin the same packages,
and constraints.txt must agree with both."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)==([^\s;]+)\s*", line)
        assert match, f"not an exact pin: {line!r}"
        pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        lines += extra
    return _pins(lines)


def environment_pins() -> tuple[dict[str, str], list]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return _pins(pip), conda


def test_environment_yml_pins_match_pyproject():
    pip, conda = environment_pins()
    assert pip == pyproject_pins()
    assert "python=3.11" in conda


def test_torch_pins_are_the_supported_pair():
    pins = pyproject_pins()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"


def test_constraints_agree_with_pyproject():
    lines = [line for line in (ROOT / "constraints.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    constraints = _pins(lines)
    for name, version in pyproject_pins().items():
        assert constraints.get(name) == version, f"constraints.txt pins {name} to {constraints.get(name)}"


def test_installed_versions_match_pins():
    from importlib.metadata import version

    for name, pinned in pyproject_pins().items():
        assert version(name) == pinned, f"{name}: installed {version(name)}, pinned {pinned}"
