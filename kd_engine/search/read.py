"""The public read API of searches (the dashboard and notebooks use only this).

`list_searches(runs_dir)` lists every search under `<runs_dir>/_searches/`;
`open_search(id_or_dir, runs_dir)` returns a `Search` whose `trials()` is one row per evaluation
(trial, reward, the trial's choices, run id, wall time, validation and test metrics, best-so-far
reward) and whose `best()` is the best trial by reward, a validation quantity. Reads never write:
the Optuna study of a BOSS search is read through its storage URL.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kd_engine.errors import KDWError
from kd_engine.search.base import SEARCHES_DIR, read_json
from kd_engine.store.reader import newest_first

BASE_COLUMNS = ["trial", "reward", "best_so_far", "status", "run_id", "wall_s", "val_acc", "val_loss",
                "test_acc"]


class Search:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / "search.json").is_file():
            raise KDWError(f"{self.root}: not a search directory (no search.json)")
        self.description: dict[str, Any] = read_json(self.root / "search.json")

    @property
    def search_id(self) -> str:
        return self.description["search_id"]

    @property
    def strategy(self) -> str:
        return self.description["strategy"]

    @property
    def budget(self) -> int:
        return int(self.description["budget"])

    def state(self) -> dict[str, Any]:
        """The sequential strategies' saved state (evaluations, MCTS tree); {} for Optuna ones."""
        path = self.root / "state.json"
        return read_json(path) if path.is_file() else {}

    def trials(self) -> pd.DataFrame:
        rows = self._optuna_rows() if "storage" in self.description else self._state_rows()
        frame = pd.DataFrame(rows)
        if frame.empty:
            return pd.DataFrame(columns=BASE_COLUMNS)
        frame = frame.sort_values("trial").reset_index(drop=True)
        reward = pd.to_numeric(frame["reward"], errors="coerce")
        frame["best_so_far"] = reward.fillna(-np.inf).cummax().replace(-np.inf, np.nan)
        for column in BASE_COLUMNS:
            if column not in frame:
                frame[column] = None
        return frame[BASE_COLUMNS + [c for c in frame.columns if c not in BASE_COLUMNS]]

    def _state_rows(self) -> list[dict[str, Any]]:
        rows = []
        for e in self.state().get("evaluations", []):
            m = e.get("metrics", {})
            rows.append({"trial": e["trial"], "reward": e.get("reward"), "status": e.get("status"),
                         "run_id": e.get("run_id"), "wall_s": e.get("wall_s"),
                         "val_acc": m.get("val/student_acc"), "val_loss": m.get("val/student_loss"),
                         "test_acc": m.get("test/student_acc"),
                         **({"val_cka": m["val/cka"]} if "val/cka" in m else {}),
                         **{k.split(".")[-1]: v for k, v in e.get("config", {}).items()}})
        return rows

    def _optuna_rows(self) -> list[dict[str, Any]]:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study = optuna.load_study(study_name=self.description["study_name"],
                                      storage=self.description["storage"])
        except KeyError:
            return []
        rows = []
        for t in study.get_trials(deepcopy=False):
            if t.state != optuna.trial.TrialState.COMPLETE:
                continue
            a = t.user_attrs
            rows.append({"trial": t.number, "reward": t.value, "status": a.get("status"),
                         "run_id": a.get("run_id"), "wall_s": a.get("wall_s"), "val_acc": a.get("val_acc"),
                         "val_loss": a.get("val_loss"), "test_acc": a.get("test_acc"), "kind": a.get("kind"),
                         **t.params, "alpha": a.get("alpha"), "teacher_trial": a.get("teacher_trial"),
                         "init_trial": a.get("init_trial")})
        return rows

    def best(self) -> dict[str, Any] | None:
        """The trial with the highest reward (validation), with its recorded test accuracy."""
        frame = self.trials()
        reward = pd.to_numeric(frame["reward"], errors="coerce")
        if reward.notna().sum() == 0:
            return None
        return frame.loc[reward.idxmax()].to_dict()

    def summary(self) -> dict[str, Any]:
        frame = self.trials()
        best = self.best() or {}
        return {"search_id": self.search_id, "strategy": self.strategy, "budget": self.budget,
                "evaluations": len(frame), "best_reward": best.get("reward"),
                "best_trial": best.get("trial"), "best_test_acc": best.get("test_acc"),
                "created": self.description.get("created"), "path": str(self.root)}


def list_searches(runs_dir: str | Path = "runs") -> pd.DataFrame:
    """One row per search under `<runs_dir>/_searches/`, newest first."""
    rows = []
    for path in sorted((Path(runs_dir) / SEARCHES_DIR).glob("*/search.json")):
        try:
            rows.append(Search(path.parent).summary())
        except Exception as exc:  # a damaged search is listed, not fatal
            rows.append({"search_id": path.parent.name, "strategy": None, "error": str(exc).splitlines()[0],
                         "path": str(path.parent)})
    columns = ["search_id", "strategy", "budget", "evaluations", "best_reward", "best_trial",
               "best_test_acc", "created", "path"]
    return newest_first(rows, columns)


def open_search(search: str | Path, runs_dir: str | Path = "runs") -> Search:
    """A search by directory or by id under `<runs_dir>/_searches/`."""
    path = Path(search)
    if (path / "search.json").is_file():
        return Search(path)
    candidate = Path(runs_dir) / SEARCHES_DIR / str(search)
    if (candidate / "search.json").is_file():
        return Search(candidate)
    raise KDWError(f"search {str(search)!r}: not found under {Path(runs_dir) / SEARCHES_DIR}")


def tree_visits(search: Search) -> pd.DataFrame:
    """MCTS visit counts per tree level and choice (level, choice, visits), summed over the tree;
    empty for strategies without a tree."""
    state = search.state()
    tree = (state.get("strategy_state") or {}).get("tree")
    if not tree:
        return pd.DataFrame(columns=["level", "choice", "visits"])
    levels = state["space"]
    counts: dict[tuple[int, int], int] = {}

    def walk(node: dict[str, Any], depth: int) -> None:
        for index, child in node["children"].items():
            counts[(depth, int(index))] = counts.get((depth, int(index)), 0) + int(child["N"])
            walk(child, depth + 1)

    walk(tree, 0)
    rows = [{"level": levels[d][0].split(".")[-1], "choice": levels[d][1][i], "visits": n}
            for (d, i), n in sorted(counts.items())]
    return pd.DataFrame(rows, columns=["level", "choice", "visits"])
