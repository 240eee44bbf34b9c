"""BOSS (paper 23): Optuna TPE whose later trials self-distil from a pool of the best earlier
checkpoints; `tpe` is the same study without self-distillation (the paper's "BO alone").

The Optuna storage is `<search dir>/optuna.db` (SQLite) unless `search.params.storage` names a
database URL (e.g. ``postgresql://user@host/db``): every worker that runs the same config with
the same storage joins the same study, so several processes or machines share one search (the
checkpoint paths of the pool must then be on a file system every worker sees).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

import numpy as np

from kd_engine.config import ExperimentConfig
from kd_engine.errors import ConfigError
from kd_engine.params import reject_unknown
from kd_engine.search.base import STRATEGIES, search_dir, write_description
from kd_engine.search.runner import base_raw, run_trial, search_id_of

log = logging.getLogger("kdw")
PARAMS = {"warmup": 8, "pool_k": 4, "storage": None, "startup_trials": 8, "metric": "val/student_acc"}
SPACE = {"lr": (1e-3, 1.0), "weight_decay": (1e-5, 1e-2), "one_minus_momentum": (1e-3, 1.0),
         "batch_size": (64, 256), "alpha": (0.0, 1.0)}


def select_pool(trials: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The best-k finished trials with a checkpoint, by validation accuracy (ties: lower
    validation loss, then the earlier trial). Test metrics are never looked at."""
    usable = [t for t in trials if t.get("checkpoint") and t.get("val_acc") is not None]
    usable.sort(key=lambda t: (-t["val_acc"], t.get("val_loss", float("inf")), t["trial"]))
    return usable[:k]


def _trial_records(study) -> list[dict[str, Any]]:
    import optuna

    return [{"trial": t.number, **t.user_attrs} for t in study.get_trials(deepcopy=False)
            if t.state == optuna.trial.TrialState.COMPLETE]


def storage_url(cfg: ExperimentConfig) -> str:
    url = cfg.search.params.get("storage")
    if url:
        return str(url)
    root = search_dir(cfg.runs_dir, search_id_of(cfg)).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'optuna.db'}"


def open_study(url: str, name: str, attempts: int = 10):
    """Create or join the study. Workers starting together race to create the schema and the
    study; SQLite waits up to 60 s for a lock, and a lost race is retried (then it loads)."""
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(attempts):
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
            return optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                       load_if_exists=True)
        except Exception:  # sqlalchemy IntegrityError / OperationalError from the race
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 + 0.3 * attempt)


def run_boss(cfg: ExperimentConfig, max_evals: int | None = None,
             evaluate: Callable[..., dict[str, Any]] | None = None, self_distill: bool = True):
    """Run (or join, or resume) the study until it holds `search.budget` complete trials, or run
    exactly `max_evals` trials of this worker when given (workers sharing a study)."""
    import optuna

    search = cfg.search
    reject_unknown(search.params, PARAMS, "search.params", f"strategy {search.strategy}")
    if search.space:
        raise ConfigError(f"search.space: strategy {search.strategy} has the paper's fixed space "
                          f"({', '.join(SPACE)}); leave search.space empty")
    p = {**PARAMS, **search.params}
    for key, low in (("warmup", 0), ("pool_k", 1), ("startup_trials", 0)):
        if isinstance(p[key], bool) or not isinstance(p[key], int) or p[key] < low:
            raise ConfigError(f"search.params.{key}: must be an integer >= {low}, got {p[key]!r}")
    sid = search_id_of(cfg)
    root = search_dir(cfg.runs_dir, sid)
    url = storage_url(cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(url, sid)
    # One sampler seed per (search seed, trials already there): a lone worker is reproducible, and
    # a resumed or second worker does not replay the first one's proposals.
    study.sampler = optuna.samplers.TPESampler(seed=search.seed * 100_003 + len(study.trials),
                                               n_startup_trials=int(p["startup_trials"]))
    write_description(root, sid, search.strategy, search.budget, cfg.to_dict(), storage=url,
                      study_name=sid, self_distill=self_distill)
    base = base_raw(cfg)

    def objective(trial: "optuna.Trial") -> float:
        overrides = {"optimizer.lr": trial.suggest_float("lr", *SPACE["lr"], log=True),
                     "optimizer.weight_decay": trial.suggest_float("weight_decay", *SPACE["weight_decay"], log=True),
                     "optimizer.momentum": 1.0 - trial.suggest_float("one_minus_momentum",
                                                                      *SPACE["one_minus_momentum"], log=True),
                     "data.batch_size": trial.suggest_int("batch_size", *SPACE["batch_size"])}
        kind, attrs = ("warmup" if self_distill else "ce"), {}
        pool = select_pool(_trial_records(study), int(p["pool_k"])) if self_distill else []
        if self_distill and trial.number >= int(p["warmup"]) and pool:
            kind = "boss"
            alpha = trial.suggest_float("alpha", *SPACE["alpha"])
            rng = np.random.default_rng([search.seed, trial.number])
            picks = rng.choice(len(pool), size=min(2, len(pool)), replace=False)
            teacher, init = pool[int(picks[0])], pool[int(picks[-1])]
            overrides.update({"method": "boss", "distill.params": {"alpha": alpha, "init_from": init["checkpoint"]},
                              "teacher": {"name": cfg.student.name, "params": cfg.student.params,
                                          "checkpoint": teacher["checkpoint"]}})
            attrs = {"alpha": alpha, "teacher_trial": teacher["trial"], "init_trial": init["trial"],
                     "pool": [t["trial"] for t in pool]}
        else:
            overrides.update({"method": "scratch", "teacher": None, "distill.params": {}})
        record = (evaluate(trial, overrides) if evaluate is not None
                  else run_trial(base, overrides, sid, trial.number, search.strategy))
        m = record.get("metrics", {})
        checkpoint = os.path.join(record["run_dir"], "checkpoints", "student.safetensors") if "run_dir" in record else None
        trial.set_user_attr("kind", kind)
        for key, value in {**attrs, "run_id": record.get("run_id"), "wall_s": record.get("wall_s"),
                           "status": record.get("status"), "checkpoint": checkpoint if record.get("status") == "finished" else None,
                           "val_acc": m.get("val/student_acc"), "val_loss": m.get("val/student_loss"),
                           "test_acc": m.get("test/student_acc"), "time": time.time()}.items():
            trial.set_user_attr(key, value)
        value = m.get(p["metric"])
        return float(value) if value is not None else 0.0  # a diverged trial scores 0

    def complete() -> int:
        return sum(1 for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE)

    if max_evals is not None:
        study.optimize(objective, n_trials=max_evals)
    else:
        while complete() < search.budget:
            study.optimize(objective, n_trials=1)
    return root


STRATEGIES.register("boss")(lambda cfg, max_evals=None, evaluate=None: run_boss(cfg, max_evals, evaluate, True))
STRATEGIES.register("tpe")(lambda cfg, max_evals=None, evaluate=None: run_boss(cfg, max_evals, evaluate, False))
