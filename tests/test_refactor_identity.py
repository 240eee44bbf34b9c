"""The engine's refactors change no result: six shipped configs at tiny CPU sizes give the same
final student weights and the same recorded instance rows as when the values in
tests/data/refactor_identity.json were recorded, to the CPU's float rounding (see
tests/refactor_identity.py)."""
from __future__ import annotations

import json

import pytest

from refactor_identity import CASES, EXPECTED, differences, fingerprints


@pytest.fixture(scope="module")
def measured():
    return fingerprints()


@pytest.mark.parametrize("name", sorted(CASES))
def test_results_are_unchanged(measured, name):
    expected = json.loads(EXPECTED.read_text())[name]
    problems = differences(measured[name], expected)
    assert not problems, (
        f"{name}: weights or instance rows changed ({'; '.join(problems[:3])}); if that is intended, "
        "rerun `python tests/refactor_identity.py --write` and say why in the commit message")
