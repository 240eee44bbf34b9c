"""Searches over runs (Auto-KD, paper 3, and BOSS, paper 23): a registry of strategies, each trial an
ordinary run of the run store, the search's state in `<runs_dir>/_searches/<id>/`.

- `mcts`: Monte Carlo tree search over a discrete space of config keys (Auto-KD's distiller
  space: transform × distance × temperature × weight), proxy-run rewards on the validation split;
- `random`: uniform sampling of the same space without replacement, at the same budget;
- `boss`: Optuna TPE whose trials after a warm-up self-distil from the best-k earlier checkpoints;
- `tpe`: the same Optuna study without self-distillation (plain BO).

`run_search(cfg)` runs or resumes one; `kd_engine.search.read` is the public read API.
"""
from __future__ import annotations

from pathlib import Path

from kd_engine.config import ExperimentConfig
from kd_engine.errors import ConfigError
from kd_engine.search import boss as _boss  # noqa: F401  (registers boss, tpe)
from kd_engine.search import sequential as _sequential  # noqa: F401  (registers mcts, random)
from kd_engine.search.base import STRATEGIES, Space, search_dir
from kd_engine.search.runner import run_sequential, search_id_of


def run_search(cfg: ExperimentConfig, max_evals: int | None = None) -> Path:
    """Run, resume or join the search `cfg.search` describes; returns its directory. At most
    `max_evals` evaluations in this call (None: until the budget is spent)."""
    if cfg.search is None:
        raise ConfigError("search: this config has no search section")
    entry = STRATEGIES.get(cfg.search.strategy, field="search.strategy")
    if isinstance(entry, type):
        return run_sequential(cfg, max_evals=max_evals)
    return entry(cfg, max_evals=max_evals)


__all__ = ["STRATEGIES", "Space", "run_search", "search_dir", "search_id_of"]
