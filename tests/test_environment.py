"""pyproject.toml declares compatible ranges; constraints.txt is the exact, tested lock; and
environment.yml (conda users) pins every direct dependency to that lock. The three stay in step."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
SELF = "kd-workbench"


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)==([^\s;]+)\s*", line)
        assert match, f"not an exact pin: {line!r}"
        pins[_name(match.group(1))] = match.group(2)
    return pins


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirements(extras: bool = True) -> dict[str, Requirement]:
    """The direct dependencies (core, and with ``extras`` every extra), by normalised name."""
    project = _project()
    lines = list(project["dependencies"])
    if extras:
        for extra in project.get("optional-dependencies", {}).values():
            lines += extra
    reqs = [Requirement(line) for line in lines]
    return {_name(r.name): r for r in reqs if _name(r.name) != SELF}


def constraints() -> dict[str, str]:
    lines = [line for line in (ROOT / "constraints.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return _pins(lines)


def environment_pins() -> tuple[dict[str, str], list]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return _pins(pip), conda


def test_pyproject_declares_ranges_not_exact_pins():
    project = _project()
    assert project["requires-python"] == ">=3.10"
    for name, req in requirements().items():
        assert not any(s.operator == "==" for s in req.specifier), f"{name} is pinned exactly in pyproject"
    core = requirements(extras=False)
    for optional in ("streamlit", "plotly", "jupyterlab", "papermill", "pytest", "playwright", "onnx"):
        assert optional not in core, f"{optional} must be an extra, not a core requirement"
    assert str(core["torch"].specifier) == ">=2.5" and str(core["torchvision"].specifier) == ">=0.20"


def test_dev_extra_pulls_every_other_extra():
    extras = _project()["optional-dependencies"]
    dev_self = [Requirement(r) for r in extras["dev"] if _name(Requirement(r).name) == SELF]
    assert dev_self and set(dev_self[0].extras) == set(extras) - {"dev"}


def test_constraints_lock_every_direct_dependency_inside_its_range():
    lock = constraints()
    for name, req in requirements().items():
        assert name in lock, f"constraints.txt does not pin {name}"
        assert req.specifier.contains(Version(lock[name]), prereleases=True), \
            f"constraints.txt pins {name}=={lock[name]}, outside pyproject's {req.specifier}"


def test_environment_yml_pins_the_lock():
    pip, conda = environment_pins()
    lock = constraints()
    assert set(pip) == set(requirements())
    for name, version in pip.items():
        assert lock[name] == version, f"environment.yml pins {name}=={version}, constraints.txt {lock[name]}"
    assert "python=3.11" in conda


def test_torch_pins_are_the_supported_pair():
    lock = constraints()
    assert lock["torch"] == "2.14.1" and lock["torchvision"] == "0.29.1"


def test_installed_versions_match_the_lock():
    from importlib.metadata import version

    lock = constraints()
    for name in requirements():
        assert version(name) == lock[name], f"{name}: installed {version(name)}, locked {lock[name]}"
