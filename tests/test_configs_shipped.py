"""Every config shipped in configs/ validates and names only registered parts, so a user (or the
dashboard's launcher) never meets a broken example. Training each at smoke size is left to the
tests of its own method."""
from __future__ import annotations

from pathlib import Path

import pytest

from kd_engine.checks import check_names
from kd_engine.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_there_are_shipped_configs():
    assert len(CONFIGS) >= 7


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_is_valid(path):
    cfg = load_config(path)
    check_names(cfg)
    assert cfg.name, f"{path.name}: no name"
