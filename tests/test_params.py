"""The one checker of ``*.params`` mappings: unknown keys, value kinds, defaults merged."""
import pytest

from kd_engine.errors import ConfigError
from kd_engine.params import check, read_params, reject_unknown

DEFAULTS = {"alpha": 0.5, "rounds": 2, "gate": True, "mode": "a", "group": ["x"], "pair": [0.5, 1.5],
            "views": {}, "path": None}


def test_defaults_are_merged_and_numbers_take_the_kind_of_their_default():
    p = read_params({"alpha": 1, "rounds": 3.0, "path": "w.pt"}, DEFAULTS, "distill.params", "method m")
    assert p == {**DEFAULTS, "alpha": 1.0, "rounds": 3, "path": "w.pt"}
    assert isinstance(p["alpha"], float) and isinstance(p["rounds"], int)
    assert read_params(None, DEFAULTS, "distill.params") == DEFAULTS


def test_unknown_key_names_field_owner_and_allowed():
    with pytest.raises(ConfigError) as err:
        read_params({"alpah": 0.1}, {"alpha": 0.5, "tau": 1.0}, "distill.params", "method m")
    assert str(err.value) == "distill.params: unknown parameter 'alpah' for method m (allowed: alpha, tau)"
    with pytest.raises(ConfigError) as err:
        reject_unknown({"x": 1}, (), "data.params")
    assert str(err.value) == "data.params: unknown parameter 'x' (allowed: none)"
    reject_unknown({"a": 1}, ["a", "b"], "data.params", "dataset d")  # known keys pass


@pytest.mark.parametrize("key,value,expected", [
    ("alpha", "high", "a number"), ("alpha", True, "a number"), ("rounds", 2.5, "an integer"),
    ("rounds", False, "an integer"), ("gate", 1, "true or false"), ("mode", 3, "a string"),
    ("group", "x", "a list"), ("pair", ["a", 1], "a list of numbers"), ("views", [1], "a mapping"),
])
def test_wrong_kind_names_the_key(key, value, expected):
    with pytest.raises(ConfigError) as err:
        read_params({key: value}, DEFAULTS, "distill.params", "method m")
    assert str(err.value) == f"distill.params.{key}: expected {expected}, got {value!r}"


def test_check_raises_only_when_the_condition_fails():
    check(True, "distill.params.tau", "must be > 0")
    with pytest.raises(ConfigError, match=r"^distill.params.tau: must be > 0$"):
        check(False, "distill.params.tau", "must be > 0")
