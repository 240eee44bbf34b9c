"""Parameter values, not only names: every loss, weighting, optimizer, schedule and method parameter
has a kind and a range, and a bad value is one ConfigError line naming the field, the value and
what is allowed, before anything trains (`kdw train` exits 2)."""
from __future__ import annotations

import math
import subprocess
from typing import Annotated, Literal

import pytest
from annotated_types import Ge, Gt, Interval, Le, Lt

from conftest import PYTHON, REPO, digits_raw, run_dirs, subprocess_env, write_config
from kd_engine.config import validate
from kd_engine.errors import ConfigError
from kd_engine.params import Param, Probability, check_call, check_value, describe_range, read_params

NAN, INF = float("nan"), float("inf")


def _one_line(exc: pytest.ExceptionInfo, *needles: str) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    return text


# -- the checker itself ---------------------------------------------------------------------------
@pytest.mark.parametrize("bounds, text", [
    ([Gt(0)], "> 0"), ([Ge(1)], ">= 1"), ([Lt(1)], "< 1"), ([Le(2.5)], "<= 2.5"),
    (list(Interval(ge=0, le=1)), "in [0, 1]"), (list(Interval(gt=0, lt=1)), "in (0, 1)"),
    (list(Interval(ge=0, lt=1)), "in [0, 1)"), ([], ""),
])
def test_ranges_in_words(bounds, text):
    assert describe_range(bounds) == text


@pytest.mark.parametrize("annotation, value, message", [
    (Annotated[float, Gt(0)], -1, "x: expected a number > 0, got -1"),
    (Annotated[float, Gt(0)], 0, "x: expected a number > 0, got 0"),
    (Annotated[float, Gt(0)], NAN, "x: expected a number > 0, got nan"),
    (Annotated[float, Ge(0)], INF, "x: expected a number >= 0, got inf"),
    (Annotated[float, Ge(0)], True, "x: expected a number >= 0, got True"),
    (Annotated[float, Ge(0)], "high", "x: expected a number >= 0, got 'high'"),
    (Annotated[float, Ge(0)], None, "x: expected a number >= 0, got None"),
    (Probability, 1.5, "x: expected a number in [0, 1], got 1.5"),
    (Probability, -0.01, "x: expected a number in [0, 1], got -0.01"),
    (Annotated[int, Ge(1)], 0, "x: expected an integer >= 1, got 0"),
    (Annotated[int, Ge(1)], 2.5, "x: expected an integer >= 1, got 2.5"),
    (Annotated[int, Ge(1)], False, "x: expected an integer >= 1, got False"),
    (Annotated[int, Ge(1)], INF, "x: expected an integer >= 1, got inf"),
    (bool, 1, "x: expected true or false, got 1"),
    (bool, "yes", "x: expected true or false, got 'yes'"),
    (str, 3, "x: expected a string, got 3"),
    (Literal["max", "target"], "min", "x: expected one of 'max', 'target', got 'min'"),
    (Literal[1, 2], True, "x: expected one of 1, 2, got True"),
    (Literal["one", "image"] | None, "x", "x: expected one of 'one', 'image' (or null), got 'x'"),
    (list[Annotated[float, Gt(0)]], [1.0, -2.0], "x.1: expected a number > 0, got -2.0"),
    (list[float], [1.0, "a"], "x: expected a list of numbers, got [1.0, 'a']"),
    (tuple[float, float], [1.0], "x: expected a list of 2 items, got [1.0]"),
    (list[float], 3.0, "x: expected a list, got 3.0"),
])
def test_bad_values_are_one_line(annotation, value, message):
    with pytest.raises(ConfigError) as err:
        check_value(value, annotation, "x")
    assert str(err.value) == message


@pytest.mark.parametrize("annotation, value, expected", [
    (Annotated[float, Gt(0)], 2, 2.0),            # an int where a float is meant becomes a float
    (Annotated[float, Gt(0)], "1e-3", 1e-3),      # YAML 1.1 reads 1e-3 as a string
    (Probability, 0, 0.0), (Probability, 1, 1.0),  # the ends of a closed interval
    (Annotated[int, Ge(1)], 3.0, 3),              # a whole float where an int is meant
    (float, NAN, NAN),                            # no range: NaN is not refused
    (float | None, None, None),
    (Literal["max", "target"], "target", "target"),
    (list[Annotated[float, Gt(0)]], (1, 2), [1.0, 2.0]),
])
def test_good_values_pass_converted(annotation, value, expected):
    out = check_value(value, annotation, "x")
    assert type(out) is type(expected)
    assert out == expected or (isinstance(out, float) and math.isnan(out) and math.isnan(expected))


def test_read_params_takes_ranged_defaults():
    defaults = {"temperature": Param(4.0, Gt(0)), "k": Param(5, Ge(1)), "mode": "a",
                "choice": Param("x", kind=Literal["x", "y"]), "path": Param(None, kind=str | None)}
    assert read_params(None, defaults, "distill.params") == {"temperature": 4.0, "k": 5, "mode": "a",
                                                              "choice": "x", "path": None}
    assert read_params({"temperature": 2, "k": 7.0}, defaults, "distill.params")["temperature"] == 2.0
    for params, message in [
        ({"temperature": -1}, "distill.params.temperature: expected a number > 0, got -1"),
        ({"k": 0}, "distill.params.k: expected an integer >= 1, got 0"),
        ({"choice": "z"}, "distill.params.choice: expected one of 'x', 'y', got 'z'"),
        ({"path": 3}, "distill.params.path: expected a string (or null), got 3"),
    ]:
        with pytest.raises(ConfigError) as err:
            read_params(params, defaults, "distill.params", "method m")
        assert str(err.value) == message


def test_check_call_reads_the_signature():
    def loss(s, t, temperature: Annotated[float, Gt(0)] = 1.0, reduction: str = "mean"):
        return temperature

    assert check_call(loss, {"temperature": 3}, "f", skip=2) == {"temperature": 3.0}
    with pytest.raises(ConfigError) as err:
        check_call(loss, {"reduction": "none"}, "f", skip=2, exclude=("reduction",))
    _one_line(err, "unknown parameter 'reduction'", "allowed: temperature")


# -- losses, weightings, optimizers, schedules, methods ---------------------------------------------
LOSS_CASES = [
    ("kd", {"temperature": -1}, "> 0"), ("kd", {"temperature": 0}, "> 0"),
    ("kd", {"temperature": NAN}, "nan"), ("kd", {"temperature": "hot"}, "'hot'"),
    ("kd", {"temperature": True}, "True"),
    ("dkd", {"alpha": -0.5}, ">= 0"), ("dkd", {"beta": INF}, "inf"), ("dkd", {"temperature": -4}, "> 0"),
    ("dist", {"gamma": -1}, ">= 0"), ("dist", {"temperature": 0.0}, "> 0"),
    ("cs", {"temperature": -2}, "> 0"),
    ("attention_transfer", {"p": 0}, "> 0"),
    ("rkd", {"distance_weight": -25}, ">= 0"), ("rkd", {"angle_weight": "50"}, "'50'"),
    ("binary_kd", {"weight_power": -1}, ">= 0"), ("binary_kd", {"temperature": None}, "None"),
    ("relation", {"kind": "l2"}, "'cosine'"), ("relation", {"distance": "emd"}, "'kl_rows'"),
    ("relation", {"normalize": "yes"}, "true or false"), ("relation", {"temperature": -1}, "> 0"),
]


@pytest.mark.parametrize("loss, params, needle", LOSS_CASES,
                         ids=[f"{c[0]}-{next(iter(c[1]))}-{c[2]}" for c in LOSS_CASES])
def test_loss_values(loss, params, needle):
    from kd_engine.losses.terms import LOSSES

    key = next(iter(params))
    with pytest.raises(ConfigError) as err:
        LOSSES.get(loss).check_params(params, "distill.terms.0.params")
    _one_line(err, f"distill.terms.0.params.{key}: expected", needle)


def test_good_loss_values_pass():
    from kd_engine.losses.terms import LOSSES

    assert LOSSES.get("kd").check_params({"temperature": 2}, "f") == {"temperature": 2.0}
    assert LOSSES.get("dkd").check_params({"alpha": 0, "beta": 8}, "f") == {"alpha": 0.0, "beta": 8.0}
    assert LOSSES.get("relation").check_params({"kind": "distance", "normalize": False}, "f")


WEIGHTING_CASES = [
    ("aid", {"alpha": -0.1}, "weighting.params.alpha: expected a number >= 0, got -0.1"),
    ("aid", {"alpha": NAN}, "weighting.params.alpha: expected a number >= 0, got nan"),
    ("aid", {"shuffle": 1}, "weighting.params.shuffle: expected true or false, got 1"),
    ("aid", {"seed": 1.5}, "weighting.params.seed: expected an integer, got 1.5"),
    ("uniform", {"value": -1}, "weighting.params.value: expected a number >= 0, got -1"),
    ("uniform", {"value": True}, "weighting.params.value: expected a number >= 0, got True"),
    ("teacher_confidence", {"power": INF}, "weighting.params.power: expected a number >= 0, got inf"),
    ("teacher_confidence", {"source": "min"},
     "weighting.params.source: expected one of 'max', 'target', got 'min'"),
]


@pytest.mark.parametrize("strategy, params, message", WEIGHTING_CASES)
def test_weighting_values(strategy, params, message):
    from kd_engine.weighting import build_weighting

    with pytest.raises(ConfigError) as err:
        build_weighting(strategy, params)
    assert str(err.value) == message


def test_good_weighting_values_pass():
    from kd_engine.weighting import build_weighting

    assert build_weighting("aid", {"alpha": 1}).alpha == 1.0
    assert build_weighting("uniform", {"value": 0}).value == 0.0


CONFIG_CASES = [  # (dotted key, value, needles) through the config schema: optimizer, schedule, weights
    ("optimizer.lr", -0.1, ["optimizer.lr", "greater than 0", "-0.1"]),
    ("optimizer.lr", True, ["optimizer.lr", "true/false"]),
    ("optimizer.lr", INF, ["optimizer.lr", "finite"]),
    ("optimizer.momentum", 1.0, ["optimizer.momentum", "less than 1", "1.0"]),
    ("optimizer.weight_decay", NAN, ["optimizer.weight_decay", "nan"]),
    ("schedule.gamma", 0, ["schedule.gamma", "greater than 0"]),
    ("schedule.step_size", 2.5, ["schedule.step_size", "2.5"]),
    ("schedule.warmup_epochs", -1, ["schedule.warmup_epochs", "-1"]),
    ("schedule.milestones", [5, -1], ["schedule.milestones.1", "-1"]),
    ("schedule.step_size", True, ["schedule.step_size", "true/false"]),
    ("teacher.train.optimizer.lr", 0, ["teacher.train.optimizer.lr", "greater than 0"]),
    ("distill.terms.0.weight", True, ["distill.terms.0.weight", "true/false"]),
    ("distill.terms.0.weight", INF, ["distill.terms.0.weight", "finite"]),
    ("distill.task_weight", -1, ["distill.task_weight", "greater than or equal to 0"]),
    ("epochs", True, ["epochs", "true/false"]),
    ("grad_clip", NAN, ["grad_clip", "finite"]),
    ("teacher.train.epochs", 0, ["teacher.train.epochs", "greater than 0"]),
]


@pytest.mark.parametrize("key, value, needles", CONFIG_CASES, ids=[f"{c[0]}={c[1]}" for c in CONFIG_CASES])
def test_config_values(tmp_path, key, value, needles):
    with pytest.raises(ConfigError) as err:
        validate(digits_raw(tmp_path / "runs", tmp_path / "cache", {key: value}))
    _one_line(err, *needles)


def test_good_optimizer_values_pass(tmp_path):
    cfg = validate(digits_raw(tmp_path, tmp_path, {"optimizer.lr": "5e-4", "schedule.milestones": [3, 6]}))
    assert cfg.optimizer.lr == 5e-4 and cfg.schedule.milestones == [3, 6]


@pytest.mark.parametrize("delta, needle", [(-0.1, "-0.1"), (1.0, "1.0"), ("big", "'big'"), (NAN, "nan")])
def test_optimizer_params_values(delta, needle):
    import torch

    from kd_engine.config import OptimizerConfig
    from kd_engine.optim import build_optimizer

    cfg = OptimizerConfig(name="dot", params={"delta": delta})
    with pytest.raises(ConfigError) as err:
        build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))])
    assert str(err.value) == f"optimizer.params.delta: expected a number in [0, 1), got {delta!r}"
    build_optimizer(OptimizerConfig(name="dot", params={"delta": 0.05}), [torch.nn.Parameter(torch.zeros(2))])


def _method_defaults():
    from kd_engine.methods import adasim, autokd, boss, kd3, l2d, mdcs, otd, wad

    return {"l2d": l2d.DEFAULTS, "otd": otd.DEFAULTS, "mdcs": mdcs.DEFAULTS, "kd3": kd3.DEFAULTS,
            "adasim": adasim.DEFAULTS, "wad": wad.DEFAULTS, "boss": boss.DEFAULTS, "autokd": autokd.PARAMS}


METHOD_CASES = [
    ("l2d", {"temperature": 0}, "> 0"), ("l2d", {"teacher_epochs": 0}, "an integer >= 1"),
    ("l2d", {"mld_weight": -1}, ">= 0"), ("l2d", {"teacher_lr": "fast"}, "'fast'"),
    ("otd", {"alpha": 1.5}, "in [0, 1]"), ("otd", {"energy": 0}, "in (0, 1]"),
    ("otd", {"mode": "mixed"}, "'self_train'"), ("otd", {"buffer": 2.5}, "an integer"),
    ("mdcs", {"kl_weight": -0.6}, ">= 0"), ("mdcs", {"ramp_epochs": 0}, ">= 1"),
    ("mdcs", {"contrast": [-0.5, 1.0]}, ">= 0"), ("mdcs", {"noise": NAN}, "nan"),
    ("kd3", {"rho_start": 0}, "in (0, 1]"), ("kd3", {"rho_end": 1.2}, "in (0, 1]"),
    ("kd3", {"selection": "best"}, "'combined'"),
    ("adasim", {"k": 0}, ">= 1"), ("adasim", {"zeta": -0.01}, "> 0"),
    ("adasim", {"momentum": 1.5}, "in [0, 1]"), ("adasim", {"partner": "knn"}, "'adaptive'"),
    ("wad", {"alpha": 2}, "in [0, 1]"), ("wad", {"rounds": 0}, ">= 1"),
    ("wad", {"simclr_lr": 0}, "> 0"), ("wad", {"weighting": "soft"}, "'wad'"),
    ("boss", {"alpha": 1.5}, "in [0, 1]"), ("boss", {"alpha": True}, "True"),
    ("autokd", {"temperature": -1}, "> 0"), ("autokd", {"weight": 0}, "> 0"),
]


@pytest.mark.parametrize("method, params, needle", METHOD_CASES,
                         ids=[f"{c[0]}-{next(iter(c[1]))}" for c in METHOD_CASES])
def test_method_values(method, params, needle):
    key = next(iter(params))
    with pytest.raises(ConfigError) as err:
        read_params(params, _method_defaults()[method], "distill.params", f"method {method}")
    _one_line(err, f"distill.params.{key}", needle)


def test_method_defaults_satisfy_their_own_ranges():
    """Every declared default is itself a valid value (a range cannot exclude its default)."""
    for method, defaults in _method_defaults().items():
        params = {k: v.default for k, v in defaults.items() if isinstance(v, Param)}
        read_params(params, defaults, "distill.params", method)


@pytest.mark.parametrize("settings, params, message", [
    ("orc", {"temperature": True}, "distill.params.temperature: expected a number > 0, got True"),
    ("orc", {"teacher_lr_scale": -1}, "distill.params.teacher_lr_scale: expected a number >= 0, got -1"),
    ("orc", {"promote": 1.5}, "distill.params.promote: expected an integer >= 1, got 1.5"),
    ("crkd", {"head_momentum": 1.0}, "distill.params.head_momentum: expected a number in (0, 1), got 1.0"),
    ("crkd", {"epsilon": NAN}, "distill.params.epsilon: expected a number > 0, got nan"),
    ("crkd", {"sk_iterations": -1}, "distill.params.sk_iterations: expected an integer >= 0, got -1"),
    ("zhang_ma", {"tau": "x"}, "distill.params.tau: expected a number > 0, got 'x'"),
    ("zhang_ma", {"tau": 0}, "distill.params.tau: expected a number > 0, got 0"),
    ("zhang_ma", {"weights": {"am": -1}}, "distill.params.weights.am: expected a number >= 0, got -1"),
    ("zhang_ma", {"channel_mask": 1}, "distill.params.channel_mask: expected true or false, got 1"),
])
def test_method_settings_values(settings, params, message):
    from kd_engine.methods.crkd import crkd_settings
    from kd_engine.methods.orc import orc_settings
    from kd_engine.methods.zhang_ma import zhang_ma_settings

    read = {"orc": orc_settings, "crkd": crkd_settings,
            "zhang_ma": lambda p: zhang_ma_settings(p, "retinanet", ["p3", "p4"])}[settings]
    with pytest.raises(ConfigError) as err:
        read(params)
    assert str(err.value) == message


def test_ferkd_values_through_its_signature():
    from kd_engine.methods.ferkd import FerKDParams
    from kd_engine.registry import construct

    with pytest.raises(ConfigError) as err:
        construct(FerKDParams, {"tau_low": 1.5}, "distill.params")
    assert str(err.value) == "distill.params.tau_low: expected a number in [0, 1], got 1.5"
    assert construct(FerKDParams, {"selfmix": 1}, "distill.params").selfmix == 1.0


# -- before anything runs ---------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, needles", [
    ({"distill.terms.0.params": {"temperature": -1}}, ["distill.terms.0.params.temperature", "-1", "> 0"]),
    ({"weighting": {"strategy": "aid", "params": {"alpha": -1}}}, ["weighting.params.alpha", ">= 0"]),
    ({"optimizer.name": "dot", "optimizer.params": {"delta": 2}}, ["optimizer.params.delta", "2", "[0, 1)"]),
])
def test_train_refuses_before_anything_runs(tmp_path, capsys, overrides, needles):
    """In-process `kdw train`: exit 2, one line, no run and no teacher trained."""
    from kd_engine.cli import main

    path = write_config(tmp_path / "config.yaml", digits_raw(tmp_path / "runs", tmp_path / "cache", overrides))
    assert main(["train", str(path), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for needle in needles:
        assert needle in err[0]
    assert run_dirs(tmp_path / "runs") == [] and not (tmp_path / "cache").exists()


def test_kdw_train_exits_2_with_one_line(tmp_path):
    """The real command, as a user runs it: `kdw train CONFIG --set ...temperature=-1`."""
    path = write_config(tmp_path / "config.yaml", digits_raw(tmp_path / "runs", tmp_path / "cache"))
    proc = subprocess.run([PYTHON, "-m", "kd_engine.cli", "train", str(path), "--set",
                           "distill.terms.0.params.temperature=-1"], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["error: distill.terms.0.params.temperature: expected a number > 0, got -1"]
    assert run_dirs(tmp_path / "runs") == []
