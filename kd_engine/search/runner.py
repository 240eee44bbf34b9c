"""Running a search: trials as ordinary runs of the run store, evaluations saved after each one.

Each trial is the search's config without its `search` section, with the trial's choices applied
as dotted keys, named `<search id>-t<NNN>` and tagged `{search_id, trial, strategy}` (in the run's
config), so it shows in the dashboard like any run. Selection uses the validation split only; the
test metrics of every trial are recorded but never read by a strategy.
"""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any, Callable

from kd_engine.config import ExperimentConfig
from kd_engine.errors import ConfigError, NonFiniteLossError
from kd_engine.search.base import STRATEGIES, Space, atomic_write_json, read_json, search_dir, write_description

log = logging.getLogger("kdw")
RUNNER_PARAMS = ("reward", "teacher_features", "cka_beta")
# Rewards from a trial's validation metrics and the search params. val_loss_cka is our reconstructed Auto-KD reward
# R = -(L_val + beta * (1 - CKA_linear(F_S, F_T))) on the validation split (beta: cka_beta, 1).
REWARDS = {"val_loss": lambda m, p: -m["val/student_loss"], "val_acc": lambda m, p: m["val/student_acc"],
           "val_loss_cka": lambda m, p: -(m["val/student_loss"] + float(p.get("cka_beta", 1.0)) * (1.0 - m["val/cka"]))}
KEPT_METRICS = ("val/student_acc", "val/student_loss", "test/student_acc", "test/student_loss")


def base_raw(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config every trial starts from: the search's config without its search section."""
    raw = cfg.to_dict()
    raw.pop("search", None)
    if raw["data"].get("split_seed") is None:  # every trial sees the same split
        raw["data"]["split_seed"] = cfg.seed
    return raw


def search_id_of(cfg: ExperimentConfig) -> str:
    return cfg.search.id or cfg.name


def run_trial(base: dict[str, Any], overrides: dict[str, Any], search_id: str, trial: int,
              strategy: str, cka_cache: Path | None = None) -> dict[str, Any]:
    """Train one trial as a normal run; returns run_id, run_dir, wall_s, status and its metrics
    (with `val/cka` against the cached teacher when `cka_cache` is given). A trial whose loss
    diverges is recorded as failed (status 'failed'), not raised."""
    from kd_engine.experiment import set_key
    from kd_engine.config import validate
    from kd_engine.store import open_run
    from kd_engine.run import train

    raw = copy.deepcopy(base)
    for key, value in overrides.items():
        set_key(raw, key, copy.deepcopy(value))
    raw["name"] = f"{search_id}-t{trial:03d}"
    raw["tags"] = {**raw.get("tags", {}), "search_id": search_id, "trial": int(trial), "strategy": strategy}
    cfg = validate(raw, f"trial {trial}")
    started = time.perf_counter()
    from kd_engine.store.writer import new_run_id

    run_id = new_run_id(raw["name"])
    try:
        run_dir = train(cfg, distributed=False, run_id=run_id)
        status = "finished"
    except NonFiniteLossError:
        run_dir, status = Path(cfg.runs_dir) / run_id, "failed"
    wall = time.perf_counter() - started
    metrics = open_run(run_dir).final_metrics() if status == "finished" else {}
    kept = {k: metrics[k] for k in KEPT_METRICS if k in metrics}
    if cka_cache is not None and status == "finished":
        kept["val/cka"] = validation_cka(cfg, Path(run_dir), cka_cache)
    return {"run_id": run_id, "run_dir": str(run_dir), "wall_s": wall, "status": status, "metrics": kept}


def validation_cka(cfg: ExperimentConfig, run_dir: Path, cache: Path) -> float:
    """Linear CKA between the trained student's `student_layer` features and the cached teacher's
    `teacher_layer` features, on the validation split (never the test split)."""
    import numpy as np
    import torch

    from kd_engine.data import build_data
    from kd_engine.metrics import linear_cka
    from kd_engine.models import build_model, feature_taps
    from kd_engine.trainers.checkpoint import load_weights

    data = build_data(cfg.data, cfg.seed)
    if not np.array_equal(np.load(cache / "val_ids.npy"), data.val.ids.numpy()):
        raise ConfigError(f"{cache / 'val_ids.npy'}: the teacher features file holds another validation split")
    student = build_model(cfg.student, data.input_shape, data.num_classes, field="student")
    load_weights(student, run_dir / "checkpoints" / "student.safetensors")
    layer = (cfg.distill.params or {}).get("student_layer", "layer2")
    with torch.no_grad(), feature_taps(student.eval(), [layer]) as taps:
        student(data.val.x.float())
    teacher = torch.from_numpy(np.load(cache / "val_features.npy"))
    return linear_cka(taps[layer].flatten(1).double(), teacher.flatten(1).double())


def write_teacher_features(cfg: ExperimentConfig, root: Path, layer: str) -> Path:
    """Teacher logits and `layer` features on the training split, computed once per search and
    stored as .npy (memory-mappable) under `root/teacher_features`; reused on resume."""
    import numpy as np
    import torch

    from kd_engine.run import build_teacher
    from kd_engine.data import build_data
    from kd_engine.data.loader import require_in_memory
    from kd_engine.models import feature_taps

    out = root / "teacher_features"
    if (out / "meta.json").is_file() and (out / "val_features.npy").is_file():
        return out
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = build_data(cfg.data, cfg.seed)
    require_in_memory(data.train, "Auto-KD's teacher features")
    teacher, source = build_teacher(cfg, data.input_shape, data.num_classes)
    x = data.train.x.float()
    with torch.no_grad(), feature_taps(teacher, [layer]) as taps:  # each pass refills `taps`
        logits = teacher(x)
        train_features = taps[layer]
        teacher(data.val.x.float())  # validation features, for the CKA reward term
        val_features = taps[layer]
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "val_features.npy", val_features.float().numpy())
    np.save(out / "val_ids.npy", data.val.ids.numpy())
    np.save(out / "inputs.npy", x.flatten(1).numpy())
    np.save(out / "logits.npy", logits.float().numpy())
    np.save(out / "features.npy", train_features.float().numpy())
    np.save(out / "ids.npy", data.train.ids.numpy())
    atomic_write_json(out / "meta.json", {"layer": layer, "teacher": source, "count": len(x),
                                          "split_seed": cfg.data.split_seed if cfg.data.split_seed is not None else cfg.seed})
    return out


def run_sequential(cfg: ExperimentConfig, max_evals: int | None = None,
                   evaluate: Callable[[dict[str, Any], int], dict[str, Any]] | None = None) -> Path:
    """Run (or resume) an `mcts`/`random` search; at most `max_evals` evaluations in this call.
    `evaluate(config, trial)` replaces the proxy run (tests): it returns a dict with `reward`."""
    search = cfg.search
    sid = search_id_of(cfg)
    root = search_dir(cfg.runs_dir, sid)
    space = Space.from_config(search.space)
    params = {k: v for k, v in search.params.items() if k not in RUNNER_PARAMS}
    reward_name = search.params.get("reward", "val_loss")
    if reward_name not in REWARDS:
        raise ConfigError(f"search.params.reward: {reward_name!r} is not one of {', '.join(REWARDS)}")
    strategy = STRATEGIES.get(search.strategy, field="search.strategy")(space, params, search.seed)
    base = base_raw(cfg)
    for key in space.keys:
        _check_key(base, key)
    state_path = root / "state.json"
    state = read_json(state_path) if state_path.is_file() else None
    if state is not None:
        if state["strategy"] != search.strategy or state["space"] != [[k, list(v)] for k, v in space.levels]:
            raise ConfigError(f"search.id: {root} holds another search (strategy or space differ); "
                              "choose another search.id")
        strategy.load_state_dict(state["strategy_state"])
    else:
        state = {"strategy": search.strategy, "space": [[k, list(v)] for k, v in space.levels],
                 "reward": reward_name, "evaluations": [], "strategy_state": strategy.state_dict()}
    write_description(root, sid, search.strategy, search.budget, cfg.to_dict(), reward=reward_name)
    overrides_all: dict[str, Any] = {}
    cache = None
    from kd_engine.methods import METHODS

    reads_features = getattr(METHODS.get(cfg.method, field="method"), "uses_teacher_features", False)
    if evaluate is None and search.params.get("teacher_features", reads_features):
        layer = (cfg.distill.params or {}).get("teacher_layer", "layer2")
        cache = write_teacher_features(cfg, root, layer)
        overrides_all = {"distill.params.teacher_features": str(cache), "teacher": None}
    if reward_name == "val_loss_cka" and evaluate is None and cache is None:
        raise ConfigError("search.params.reward: val_loss_cka reads the teacher's cached validation "
                          "features; set search.params.teacher_features: true (method autokd)")
    done_now = 0
    while len(state["evaluations"]) < search.budget and (max_evals is None or done_now < max_evals):
        trial = len(state["evaluations"])
        path = strategy.propose()
        config = space.config(path)
        if evaluate is not None:
            record = dict(evaluate(config, trial))
        else:
            record = run_trial(base, {**overrides_all, **config}, sid, trial, search.strategy,
                               cka_cache=cache if reward_name == "val_loss_cka" else None)
            m = record["metrics"]
            record["reward"] = REWARDS[reward_name](m, search.params) if record["status"] == "finished" else None
        reward = record["reward"]
        worst = min([e["reward"] for e in state["evaluations"] if e["reward"] is not None], default=0.0)
        strategy.observe(path, worst if reward is None else reward)  # a diverged trial counts as the worst seen
        state["evaluations"].append({"trial": trial, "path": list(path), "config": config,
                                     "time": time.time(), **record})
        state["strategy_state"] = strategy.state_dict()
        atomic_write_json(state_path, state)
        done_now += 1
        log.info("search %s trial %d/%d reward %s %s", sid, trial + 1, search.budget, reward, config)
    return root


def _check_key(base: dict[str, Any], dotted: str) -> None:
    """A space key must name a config key that validates (checked on a copy with a dummy value later)."""
    top = dotted.split(".")[0]
    if top not in ExperimentConfig.model_fields or top == "search":
        raise ConfigError(f"search.space.{dotted}: {top!r} is not a config key "
                          f"(allowed: {', '.join(k for k in ExperimentConfig.model_fields if k != 'search')})")
