"""Run arms over seeds and report them honestly; shared by every notebook.

A notebook holds only its method's arms and analysis; the rest is here: ``setup`` (budget, seeds,
work folders, the budgeted config), ``run_arms``, ``collect_scalars``/``collect_instances`` (many
runs' store rows in one frame, tagged with arm and seed), ``summarize`` and ``NotebookContext.save``.

The reporting rule (docs/NOTEBOOKS.md): every arm runs on the same seeds; each arm is reported as
mean ± std (n−1) over seeds; each arm is compared with the baseline by the per-seed paired
difference, mean ± std; an effect is *resolved* only if |mean diff| > 2·std/√n of the paired
differences, otherwise it is *within noise*. No seed is ever dropped.
"""
from __future__ import annotations

import copy
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from kd_engine.arm_runs import train_or_reuse
from kd_engine.errors import KDWError

BUDGETS = ("smoke", "full")
MIN_FULL_SEEDS = 3


def budget_settings(budget: str, seeds: int = 5, epochs: int | None = None,
                    teacher_epochs: int | None = None, threads: int = 1) -> dict[str, Any]:
    """What a budget means. smoke: 1 seed, 2 epochs (student and teacher), a plumbing check.
    full: `seeds` seeds (never fewer than 3) and `epochs`/`teacher_epochs` (None: the config's).

    One torch thread per run by default: on the shared 2-core machine two threads per process
    oversubscribe the cores as soon as anything else runs, and tiny models slow down many times.
    """
    if budget == "smoke":
        return {"budget": "smoke", "seeds": [0], "epochs": 2, "teacher_epochs": 2, "threads": threads}
    if budget == "full":
        if seeds < MIN_FULL_SEEDS:
            raise KDWError(f"budget full: {seeds} seeds is below the minimum of {MIN_FULL_SEEDS}")
        return {"budget": "full", "seeds": list(range(seeds)), "epochs": epochs,
                "teacher_epochs": teacher_epochs, "threads": threads}
    raise KDWError(f"budget {budget!r}: expected one of {', '.join(BUDGETS)}")


def repo_file(relative: str | Path) -> Path:
    """A repository file such as ``configs/digits_kd.yaml``, found from the working directory or
    its parents (JupyterLab starts kernels in ``notebooks/``, papermill in the repository root)."""
    for root in (Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parent.parent):
        if (root / relative).exists():
            return root / relative
    raise KDWError(f"{relative}: not found from {Path.cwd()} or its parents")


def work_dirs(work_dir: str | Path | None, name: str) -> tuple[Path, Path, Path]:
    """A notebook's work folder (``work_dir``, or a fresh temporary ``kdw-<name>-*`` folder) and
    its ``runs`` and ``cache`` subfolders."""
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix=f"kdw-{name}-"))
    return work, work / "runs", work / "cache"


def set_key(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.0.c`` in a raw config dict, creating mappings on the way."""
    node: Any = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def apply_budget(raw: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the raw config with the budget's epochs and threads applied."""
    out = copy.deepcopy(dict(raw))
    if settings.get("epochs"):
        out["epochs"] = settings["epochs"]
    if settings.get("teacher_epochs") and out.get("teacher"):
        set_key(out, "teacher.train.epochs", settings["teacher_epochs"])
    if settings.get("threads"):
        out["threads"] = settings["threads"]
    return out


def arm_config(base: Mapping[str, Any], overrides: Mapping[str, Any], seed: int, runs_dir, cache_dir,
               name: str | None = None):
    """The validated config of one arm at one seed (overrides are dotted keys -> values)."""
    from kd_engine.config import validate

    raw = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        set_key(raw, key, copy.deepcopy(value))
    raw.update(seed=int(seed), runs_dir=str(runs_dir), cache_dir=str(cache_dir))
    if name:
        raw["name"] = name
    raw.setdefault("device", "cpu")
    return validate(raw, f"arm {name or raw.get('name')}")


def prepare_teachers(base: Mapping[str, Any], seeds: Iterable[int], runs_dir, cache_dir) -> pd.DataFrame:
    """Train (or load from the cache) the teacher each seed's split needs; one row per seed."""
    from kd_engine.cache import teacher_cache_path
    from kd_engine.run import build_teacher
    from kd_engine.data import build_data

    rows = []
    for seed in seeds:
        cfg = arm_config(base, {}, seed, runs_dir, cache_dir)
        path = teacher_cache_path(cfg)
        cached = path.is_file()
        started = time.perf_counter()
        data = build_data(cfg.data, cfg.seed)
        build_teacher(cfg, data.input_shape, data.num_classes)
        rows.append({"seed": int(seed), "cache_path": str(path), "cached": cached,
                     "wall_s": time.perf_counter() - started})
    return pd.DataFrame(rows)


def _run_one(base: Mapping[str, Any], arm: str, overrides: Mapping[str, Any], seed: int, runs_dir,
             cache_dir) -> dict[str, Any]:
    """Train one arm at one seed and return its row (also the unit of work of a worker process)."""
    from kd_engine.store import open_run
    from kd_engine.run import train

    cfg = arm_config(base, overrides, seed, runs_dir, cache_dir, name=f"{base.get('name', 'exp')}-{arm}-s{seed}")
    started = time.perf_counter()
    run_dir, source = train_or_reuse(cfg, train)  # a finished run with this config is reused
    wall = time.perf_counter() - started
    return {"arm": arm, "seed": int(seed), "run_id": Path(run_dir).name, "run_dir": str(run_dir),
            "wall_s": wall, "source": source, **open_run(run_dir).final_metrics()}


def run_arms(base: Mapping[str, Any], arms: Mapping[str, Mapping[str, Any]], seeds: Iterable[int],
             runs_dir, cache_dir, verbose: bool = True, workers: int = 1) -> pd.DataFrame:
    """Train every arm at every seed (same seeds for all arms) and collect the final metrics.

    Returns one row per arm x seed (seed-major order): arm, seed, run_id, run_dir, wall_s and every
    final metric. ``workers`` > 1 trains that many runs at once (see `run_jobs`).
    """
    jobs = [(base, arm, overrides, int(seed)) for seed in seeds for arm, overrides in arms.items()]
    return run_jobs(jobs, runs_dir, cache_dir, verbose=verbose, workers=workers)


def run_jobs(jobs: Iterable[tuple[Mapping[str, Any], str, Mapping[str, Any], int]], runs_dir, cache_dir,
             verbose: bool = True, workers: int = 1) -> pd.DataFrame:
    """Train each (base config, arm name, overrides, seed) job; one row per job, in job order.

    ``workers`` > 1 trains that many runs at once in separate spawned processes (one torch thread
    each, as the config says): on a 2-core machine two single-threaded runs finish nearly twice as
    fast as one after the other. Jobs that need the same uncached teacher must not start together
    (call `prepare_teachers` first).
    """
    jobs = [(dict(base), arm, dict(overrides), int(seed)) for base, arm, overrides, seed in jobs]

    def report(row: dict[str, Any]) -> dict[str, Any]:
        if verbose:
            shown = next((row[k] for k in ("test/student_acc", "test/student_mAP", "test/student_edit_success")
                          if k in row), float("nan"))
            print(f"seed {row['seed']} {row['arm']:<12} {shown:.4f}  ({row['wall_s']:.1f} s)", flush=True)
        return row

    if workers <= 1 or len(jobs) <= 1:
        return pd.DataFrame([report(_run_one(*job, runs_dir, cache_dir)) for job in jobs])
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")  # never fork a process that holds torch threads
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(_run_one, *job, str(runs_dir), str(cache_dir)) for job in jobs]
        return pd.DataFrame([report(future.result()) for future in futures])


@dataclass
class NotebookContext:
    """What every notebook sets up first: its name, budget, seeds, work folders and (when it has
    one) the budgeted base config. ``started`` is when set-up began, for the wall time."""

    name: str
    budget: str
    settings: dict[str, Any]
    seeds: list[int]
    work: Path
    runs_dir: Path
    cache_dir: Path
    base: dict[str, Any] | None = None
    started: float = field(default_factory=time.perf_counter)

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self.started

    def prepare_teachers(self, base: Mapping[str, Any] | None = None) -> pd.DataFrame:
        return prepare_teachers(self.base if base is None else base, self.seeds, self.runs_dir, self.cache_dir)

    def run_arms(self, arms: Mapping[str, Mapping[str, Any]], base: Mapping[str, Any] | None = None,
                 seeds: Iterable[int] | None = None, **kwargs: Any) -> pd.DataFrame:
        """`run_arms` on this context's base config, seeds and folders."""
        return run_arms(self.base if base is None else base, arms, self.seeds if seeds is None else seeds,
                        self.runs_dir, self.cache_dir, **kwargs)

    def save(self, results_path, summaries: list[tuple[pd.DataFrame, str]], title: str,
             notes: str = "") -> dict[str, Any] | None:
        """`save_results` under this notebook's name, budget and seeds, with the wall time so far."""
        return save_results(results_path, self.name, summaries, self.budget, self.seeds, self.wall_s,
                            title=title, notes=notes)


def setup(name: str, config: str | Path | Mapping[str, Any] | None, budget: str, seeds: int = 5,
          work_dir: str | Path | None = None, show: bool = True, **budget_options: Any) -> NotebookContext:
    """A notebook's set-up: `budget_settings(budget, seeds, **budget_options)`, its work folders
    (`work_dir` or a fresh ``kdw-<name>-*`` folder) and, when ``config`` is given (a repository
    path or a raw mapping), that config with the budget applied as ``context.base``. With
    ``show`` it prints the budget and where the runs go."""
    started = time.perf_counter()
    settings = budget_settings(budget, seeds=seeds, **budget_options)
    work, runs_dir, cache_dir = work_dirs(work_dir, name.replace("_", "-"))
    base = None
    if config is not None:
        from kd_engine.config import load_raw

        raw = load_raw(repo_file(config)) if isinstance(config, (str, Path)) else config
        base = apply_budget(raw, settings)
    context = NotebookContext(name, settings["budget"], settings, list(settings["seeds"]), work, runs_dir,
                              cache_dir, base, started)
    if show:
        print(_describe_setup(context))
    return context


def _describe_setup(context: NotebookContext) -> str:
    base = context.base or {}
    parts = [f"budget {context.budget}: seeds {context.seeds}"]
    if "epochs" in base:
        parts.append(f"student epochs {base['epochs']}")
    if (base.get("teacher") or {}).get("train", {}).get("epochs"):
        parts.append(f"teacher epochs {base['teacher']['train']['epochs']}")
    if base.get("threads"):
        parts.append(f"{base['threads']} torch thread(s) per run")
    return (", ".join(parts) + f"\nruns: {context.runs_dir}  (browse them with: kdw dashboard --runs-dir "
            f"{context.runs_dir})")


def _tagged(frame: pd.DataFrame, read, tags: Iterable[str]) -> pd.DataFrame:
    """``read(run)`` of every row's run, each tagged with that row's ``tags`` columns, in one frame."""
    from kd_engine.store import open_run

    tags = [t for t in tags if t in frame.columns]
    parts = [read(open_run(row["run_dir"])).assign(**{t: row[t] for t in tags})
             for row in frame.to_dict("records")]
    if not parts:
        raise KDWError("collect: the frame has no runs")
    return pd.concat(parts, ignore_index=True)


def collect_scalars(frame: pd.DataFrame, keys: Iterable[str] | None = None,
                    tags: Iterable[str] = ("arm", "seed")) -> pd.DataFrame:
    """The scalars (``keys``, or all) of every run in ``frame`` (one row per run, with ``run_dir``)
    as one long frame (step, epoch, key, value, ...), tagged with the row's ``arm`` and ``seed``."""
    keys = list(keys) if keys is not None else None
    return _tagged(frame, lambda run: run.scalars(keys=keys), tags)


def collect_instances(frame: pd.DataFrame, split: str | None = "train", columns: Iterable[str] | None = None,
                      tags: Iterable[str] = ("arm", "seed"), **options: Any) -> pd.DataFrame:
    """The per-instance rows (``split``, ``columns``; ``options`` as for the store's
    ``instances``) of every run in ``frame``, as one frame tagged with ``arm`` and ``seed``."""
    columns = list(columns) if columns is not None else None
    return _tagged(frame, lambda run: run.instances(split=split, columns=columns, **options), tags)


def reference_arm(frame: pd.DataFrame, source_arm: str, name: str = "teacher",
                  role: str = "teacher") -> pd.DataFrame:
    """Rows for a model observed inside another arm's runs (e.g. the frozen teacher): each
    ``split/<role>_metric`` value is copied into ``split/student_metric`` so it is summarized in
    the same column as the students."""
    rows = frame[frame["arm"] == source_arm].copy()
    if rows.empty:
        raise KDWError(f"reference arm: no rows for arm {source_arm!r}")
    for column in list(rows.columns):
        if f"/{role}_" in column:
            rows[column.replace(f"/{role}_", "/student_")] = rows[column]
    rows["arm"] = name
    return rows


def _std(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def verdict(diffs: Iterable[float]) -> str:
    """'resolved' only if |mean| > 2·std/√n of the paired differences (n ≥ 2), else 'within noise'."""
    d = np.asarray(list(diffs), dtype=float)
    if len(d) < 2 or not np.all(np.isfinite(d)):
        return "within noise"
    return "resolved" if abs(d.mean()) > 2 * _std(d) / math.sqrt(len(d)) else "within noise"


def summarize(frame: pd.DataFrame, metric: str, baseline: str, arm_col: str = "arm",
              seed_col: str = "seed") -> pd.DataFrame:
    """Per arm: mean, std (n−1), n; paired difference to `baseline` per seed: diff_mean, diff_std,
    the 2·std/√n threshold and the verdict. The baseline's own row has verdict 'baseline'."""
    if metric not in frame:
        raise KDWError(f"summarize: no column {metric!r}")
    arms = list(dict.fromkeys(frame[arm_col]))
    if baseline not in arms:
        raise KDWError(f"summarize: baseline arm {baseline!r} not among {', '.join(map(str, arms))}")
    table = frame.pivot_table(index=seed_col, columns=arm_col, values=metric, aggfunc="first", dropna=False)
    missing = table.columns[table.isna().any()].tolist()
    if missing:
        raise KDWError(f"summarize: arm {missing[0]!r} lacks {metric} on some seeds (seeds are never dropped)")
    rows = []
    for arm in arms:
        values = table[arm].to_numpy(dtype=float)
        n = len(values)
        row = {"arm": arm, "metric": metric, "mean": float(values.mean()), "std": _std(values), "n": n}
        if arm == baseline:
            row.update(diff_mean=None, diff_std=None, threshold=None, verdict="baseline")
        else:
            diffs = values - table[baseline].to_numpy(dtype=float)
            std = _std(diffs)
            row.update(diff_mean=float(diffs.mean()), diff_std=std,
                       threshold=2 * std / math.sqrt(n) if n > 1 else float("nan"),
                       verdict=verdict(diffs))
        rows.append(row)
    return pd.DataFrame(rows)


def format_summary(summary: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Human-readable columns: 'mean ± std' and 'diff ± std' strings plus the verdict."""
    def pm(mean, std, sign=""):
        if mean is None or pd.isna(mean):
            return "—"
        spread = "n/a" if std is None or pd.isna(std) else f"{std:.{digits}f}"
        return f"{mean:{sign}.{digits}f} ± {spread}"

    return pd.DataFrame({
        "arm": summary["arm"], "metric": summary["metric"], "n": summary["n"],
        "mean ± std": [pm(m, s) for m, s in zip(summary["mean"], summary["std"])],
        "paired diff ± std": [pm(m, s, "+") for m, s in zip(summary["diff_mean"], summary["diff_std"])],
        "verdict": summary["verdict"]})


def _clean(value: Any) -> Any:
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def results_rows(notebook: str, summary: pd.DataFrame, budget: str, seeds: Iterable[int],
                 wall_s: float, baseline: str | None = None) -> list[dict[str, Any]]:
    """The machine-readable rows of a results JSON (schema in docs/NOTEBOOKS.md)."""
    seeds = [int(s) for s in seeds]
    keys = ("arm", "metric", "mean", "std", "n", "diff_mean", "diff_std", "verdict")
    return [{"notebook": notebook, **{k: _clean(row[k]) for k in keys}, "baseline": baseline,
             "budget": budget, "seeds": seeds, "wall_s": round(float(wall_s), 2)}
            for row in summary.to_dict("records")]


def save_results(path, notebook: str, summaries: list[tuple[pd.DataFrame, str]], budget: str,
                 seeds: Iterable[int], wall_s: float, title: str | None = None,
                 notes: str = "") -> dict[str, Any] | None:
    """Write the notebook's results JSON (`summaries`: (summary, baseline) pairs); no-op if
    `path` is None (an interactive session)."""
    rows = [r for summary, baseline in summaries
            for r in results_rows(notebook, summary, budget, seeds, wall_s, baseline)]
    payload = {"notebook": notebook, "title": title or notebook, "budget": budget,
               "seeds": [int(s) for s in seeds], "wall_s": round(float(wall_s), 2),
               "generated": time.strftime("%Y-%m-%d %H:%M:%S"), "notes": notes, "rows": rows}
    if path is None:
        return payload
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return payload
