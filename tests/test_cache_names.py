"""One name per cache: the soft-label bank is `use_teacher_bank` and Auto-KD's feature file is
`teacher_features`; configs written with the old name `teacher_cache` still validate to the new
keys and log one deprecation line each."""
from __future__ import annotations

import logging

from kd_engine.config import validate

BASE = {"student": {"name": "resnet"}, "teacher": {"name": "resnet"}}


def test_old_teacher_cache_key_means_the_teacher_bank(caplog):
    with caplog.at_level(logging.WARNING, logger="kdw"):
        cfg = validate({**BASE, "teacher_cache": True})
    assert cfg.use_teacher_bank is True
    assert "teacher_cache" not in cfg.to_dict()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["config: teacher_cache is deprecated; it is now use_teacher_bank"]


def test_old_autokd_and_search_keys_mean_teacher_features(caplog):
    raw = {**BASE, "method": "autokd", "distill": {"params": {"teacher_cache": "/tmp/x"}},
           "search": {"params": {"teacher_cache": False}}}
    with caplog.at_level(logging.WARNING, logger="kdw"):
        cfg = validate(raw)
    assert cfg.distill.params == {"teacher_features": "/tmp/x"}
    assert cfg.search.params == {"teacher_features": False}
    assert raw["distill"]["params"] == {"teacher_cache": "/tmp/x"}  # the caller's mapping is untouched
    assert len(caplog.records) == 2 and all("is deprecated" in r.getMessage() for r in caplog.records)


def test_old_and_new_key_with_different_values_is_refused():
    import pytest

    from kd_engine.errors import ConfigError

    with pytest.raises(ConfigError, match="teacher_cache: the old name of use_teacher_bank"):
        validate({**BASE, "teacher_cache": False, "use_teacher_bank": True})


def test_new_keys_log_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="kdw"):
        cfg = validate({**BASE, "use_teacher_bank": True})
    assert cfg.use_teacher_bank is True and not caplog.records
