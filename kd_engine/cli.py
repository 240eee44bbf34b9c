"""`kdw`: train, list, inspect and stop runs, list a model's layers, export a student, open the
dashboard, reproduce the notebooks.

User errors print one line (`error: ...`) and exit with status 2; nothing prints a traceback
for a mistake in a config or a file.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from kd_engine.errors import KDWError


def _cmd_train(args: argparse.Namespace) -> int:
    from kd_engine.config import load_config

    if args.resume:
        if args.config or args.set or args.run_id:
            raise KDWError("--resume takes the run's own config and id; do not pass CONFIG, --set or --run-id")
        from kd_engine.store import resolve_run
        from kd_engine.store.lock import require_unlocked

        resume = resolve_run(args.resume, args.runs_dir or "runs")
        require_unlocked(resume)  # at once, before data and models are built (the writer re-checks)
        from kd_engine.run import train

        run_dir = train(None, resume=resume)
    else:
        if not args.config:
            raise KDWError("train: give a CONFIG file or --resume RUN")
        overrides = list(args.set or [])
        if args.runs_dir:
            overrides.append(f"runs_dir={args.runs_dir}")
        cfg = load_config(args.config, overrides)  # before torch is imported: a typo fails at once
        if args.run_id:
            from kd_engine.store.schema import DB_NAME
            from kd_engine.store.writer import RunExistsError, check_run_id, run_exists_message

            run_dir = Path(cfg.runs_dir) / check_run_id(args.run_id, "--run-id")
            if (run_dir / DB_NAME).exists():
                raise RunExistsError(run_exists_message(run_dir))
        if cfg.search is not None:  # a search section: run (or resume) the search of trials
            from kd_engine.search import run_search

            print(run_search(cfg))
            return 0
        from kd_engine.run import train

        run_dir = train(cfg, run_id=args.run_id)
    if int(os.environ.get("RANK", "0")) == 0:
        print(run_dir)
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    if args.list:
        from kd_engine.search.read import list_searches

        frame = list_searches(args.runs_dir or "runs")
        print(frame.drop(columns=["created"]).to_string(index=False) if not frame.empty else "no searches")
        return 0
    from kd_engine.config import load_config

    if not args.config:
        raise KDWError("search: give a CONFIG file with a search section (or --list)")
    overrides = list(args.set or []) + ([f"runs_dir={args.runs_dir}"] if args.runs_dir else [])
    cfg = load_config(args.config, overrides)
    from kd_engine.search import run_search

    print(run_search(cfg, max_evals=args.max_evals))
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from kd_engine.store import list_runs

    frame = list_runs(args.runs_dir)
    if args.json:
        print(frame.to_json(orient="records"))
        return 0
    if frame.empty:
        print(f"no runs under {args.runs_dir}")
        return 0
    metric_cols = [c for c in ("test/student_acc", "test/teacher_acc", "test/student_mAP",
                               "test/teacher_mAP") if c in frame]
    shown = frame[["run_id", "status", "method", "dataset", "teacher", "student", *metric_cols]]
    if frame["warning"].notna().any():  # e.g. finished at chance accuracy: say so in the listing
        shown = shown.assign(warning=frame["warning"].fillna("").str.slice(0, 60))
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from kd_engine.store import open_run

    run = open_run(args.run, args.runs_dir)
    meta = run.meta()
    if args.json:
        print(json.dumps({"run_id": run.run_id, "status": run.status(), "config": run.config(),
                          "final_metrics": run.final_metrics()}, indent=2, default=str))
        return 0
    print(f"run       {run.run_id}  [{run.status()}]")
    if meta.get("error"):
        print(f"error     {meta['error']}")
    if meta.get("warning"):
        print(f"warning   {meta['warning']}")
    for key in ("method", "dataset", "teacher", "student", "weighting", "seed", "epochs", "device"):
        print(f"{key:<9} {meta.get(key)}")
    metrics = run.final_metrics()
    if metrics:
        print("\n          teacher    student")
        for split in ("val", "test"):
            for name in ("acc", "loss", "mAP", "AP50"):  # classification or detection
                t = metrics.get(f"{split}/teacher_{name}")
                s = metrics.get(f"{split}/student_{name}")
                if t is None and s is None:
                    continue
                cells = [f"{v:9.4f}" if v is not None else "        -" for v in (t, s)]
                print(f"{split + ' ' + name:<9} {cells[0]}  {cells[1]}")
        params_t, params_s = meta.get("teacher_params"), meta.get("student_params")
        if params_t:
            print(f"params    {params_t:9d}  {params_s:9d}")
    print(f"\nconfig    {run.run_dir / 'config.yaml'}")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from kd_engine.store import open_run
    from kd_engine.store.control import stop_run

    run = open_run(args.run, args.runs_dir)
    status = run.status()
    if status not in ("running", "not responding"):
        raise KDWError(f"run {run.run_id} is {status}, not running")
    print(stop_run(run))
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    app = Path(__file__).resolve().parent.parent / "streamlit_app.py"
    if not app.is_file():
        raise KDWError(f"{app}: dashboard not found (run kdw from a source checkout)")
    env = dict(os.environ, KDW_RUNS_DIR=str(Path(args.runs_dir).resolve()))
    # Always headless: a non-headless first start asks for an e-mail on stdin. We open the
    # browser ourselves instead, unless --no-browser.
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", args.host,
               "--server.port", str(args.port), "--server.headless", "true",
               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
               "--server.enableXsrfProtection", "true"]
    from kd_engine.host_check import allowed_hosts

    for name in allowed_hosts(args.host, args.allow_host or []):  # DNS rebinding: see host_check
        command += ["--server.allowedHosts", name]
    url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    print(f"KD Workbench dashboard: {url}  (runs: {env['KDW_RUNS_DIR']}; Ctrl-C to stop)", flush=True)
    has_screen = not sys.platform.startswith("linux") or any(
        os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY"))
    if has_screen and not args.no_browser:
        import threading
        import webbrowser

        threading.Timer(3.0, lambda: webbrowser.open(url)).start()
    return subprocess.call(command, env=env)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from kd_engine.reproduce import reproduce

    reproduce(args.names, budget=args.budget, output=args.output, fresh=args.fresh)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from kd_engine.demo import make_demo

    make_demo(runs_dir=args.runs_dir, checkpoints=args.checkpoints, force=args.force)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from kd_engine.diagnosis.report import write_report
    from kd_engine.store import open_run

    runs = [open_run(r, args.runs_dir) for r in args.runs]
    controls = [open_run(args.control, args.runs_dir)] * len(runs) if args.control else None
    name = "_vs_".join(r.run_id for r in runs)
    print(write_report(runs, args.output or Path("artifacts") / "reports" / f"{name}.html", controls))
    return 0


def _cmd_layers(args: argparse.Namespace) -> int:
    from kd_engine.layers import layers_table

    params = {}
    for assignment in args.param or []:
        key, sep, value = assignment.partition("=")
        if not sep:
            raise KDWError(f"--param {assignment!r}: expected key=value")
        import yaml

        params[key] = yaml.safe_load(value)
    print(layers_table(args.model, args.input, args.classes, params))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from kd_engine.export import export_student

    print(export_student(args.run, args.format, args.output, args.runs_dir))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from kd_engine.bench_device import command

    return command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdw", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a run from a YAML config, or resume one")
    p.add_argument("config", nargs="?")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--resume", metavar="RUN", help="continue a stopped, failed or killed run")
    p.add_argument("--runs-dir", help="where runs go (overrides runs_dir)")
    p.add_argument("--run-id", help="the run's directory name (default: time-name-random)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("search", help="run, resume or join a search (a config with a search section)")
    p.add_argument("config", nargs="?")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--runs-dir", help="where runs and searches go (overrides runs_dir)")
    p.add_argument("--max-evals", type=int, metavar="N",
                   help="run at most N evaluations now (a worker sharing an Optuna study runs exactly N)")
    p.add_argument("--list", action="store_true", help="list the searches under --runs-dir")
    p.set_defaults(func=_cmd_search)

    for name, func, text in (("runs", _cmd_runs, "list runs"), ("show", _cmd_show, "show one run"),
                             ("stop", _cmd_stop, "stop a running run")):
        p = sub.add_parser(name, help=text)
        if name != "runs":
            p.add_argument("run")
        if name != "stop":
            p.add_argument("--json", action="store_true")
        p.add_argument("--runs-dir", default="runs")
        p.set_defaults(func=func)

    p = sub.add_parser("layers", help="list a model's tappable module paths and output shapes")
    p.add_argument("model", help="a config file, a model name, torchvision:ARCH, timm:ARCH, "
                                 "import:pkg.mod:factory, or '{name: ..., params: {...}}'")
    p.add_argument("--input", help="per-sample input shape, e.g. 3x32x32 (default: the config's data, "
                                   "else 3x32x32)")
    p.add_argument("--classes", type=int, default=10, help="outputs of the head (default 10)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="a model param (YAML value)")
    p.set_defaults(func=_cmd_layers)

    p = sub.add_parser("export", help="write a run's trained student as safetensors, TorchScript or ONNX")
    p.add_argument("run")
    p.add_argument("--format", default="safetensors", choices=("safetensors", "torchscript", "onnx"))
    p.add_argument("--output", help="the file to write (default: RUN/export/student.<ext>)")
    p.add_argument("--runs-dir", default="runs")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("dashboard", help="open the Streamlit dashboard")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: local only)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument("--allow-host", action="append", metavar="NAME",
                   help="also answer requests for this host name (e.g. behind a proxy); loopback names "
                        "and the --host address always work")
    p.set_defaults(func=_cmd_dashboard)

    p = sub.add_parser("reproduce", help="execute notebooks and regenerate docs/results.md")
    p.add_argument("names", nargs="*", help="notebook names (default: all)")
    p.add_argument("--budget", choices=("smoke", "full", "gpu"), default="smoke",
                   help="smoke: CI plumbing check; full: the measured CPU budget; gpu: larger, where a "
                        "notebook defines it (results stay in --output)")
    p.add_argument("--output", default="artifacts/notebooks")
    p.add_argument("--fresh", action="store_true",
                   help="discard earlier runs in --output/work (by default a finished arm with the same "
                        "config is reused and an interrupted one resumes)")
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser("demo", help="(re)build the shipped demo checkpoints and demo runs")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--checkpoints", default="checkpoints")
    p.add_argument("--force", action="store_true", help="retrain the checkpoints even if present")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("report", help="write a static HTML report of one run, or compare two")
    p.add_argument("runs", nargs="+", metavar="RUN", help="one run, or two to compare")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--output", help="the HTML file (default: artifacts/reports/<run>.html)")
    p.add_argument("--control", metavar="RUN", help="the scratch run to compare copied mistakes against "
                   "(default: the newest scratch run of the same data and seed)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("bench", help="images/s and peak GPU memory of the CIFAR-100 KD config, engine vs a bare loop")
    from kd_engine.bench_device import add_arguments  # argparse only: torch is imported when it runs

    add_arguments(p)
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe (`kdw show RUN | head`) is caught below
        return code
    except BrokenPipeError:
        # The reader went away: say nothing more, and keep Python's exit-time flush quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KDWError as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
