"""Run health: a few checks that catch the distillations that silently do nothing or go wrong.

Each check reads only the store (so it works while a run trains) and returns `Check`s: a status,
one sentence, and where the evidence is (a page, a scalar key, an epoch). A check that lacks the
records it needs says so ("no data") instead of passing.

What the checks read:
- `val/teacher_acc|mAP`, `val/student_acc|mAP` and the val instance labels (teacher vs chance);
- `train/distill` and `train/term/<name>` plus the config's term weights (dead distillation);
- `tap_calls/<role>/<layer>` (forward-hook calls of a feature tap in an epoch, 0 = never fired)
  and the features table against the distilled layers (feature taps);
- `grad_norm/<loss>` (or `train/grad_norm/<loss>`), the gradient norm of each loss term with
  respect to the student, recorded every `record.grad_norms_every` steps (gradient balance);
- the train instances' `weight` column (collapsed weights);
- the validation metric per evaluation and `train/loss` per epoch (a flat validation metric).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kd_engine.store import Run

OK, WARN, FAIL, NO_DATA, NOT_APPLICABLE = "ok", "warn", "fail", "no data", "n/a"
FLAGGED = (WARN, FAIL)

CHANCE_P_VALUE = 0.01        # a teacher whose accuracy a coin of the majority rate reaches this often
STUDENT_MARGIN = 0.02        # the student beats the teacher by more than this: worth a look
GRAD_NEGLIGIBLE = 0.01       # distillation gradient below 1% of the task gradient
GRAD_SWAMPS = 100.0          # ... or over 100x it
GRAD_WINDOW = 50             # the last recorded steps the gradient ratio is taken over
COLLAPSE_TOL = 1e-3          # |w - 1| or w under this counts as "about 1" / "about 0"
COLLAPSE_SHARE = 0.99        # ... for this share of the instances
FLAT_TOL = 0.01              # validation metric range over the whole run below this is flat
LOSS_FALL = 0.02             # the training loss fell by more than 2% from the first epoch
_GRAD_KEY = re.compile(r"^(?:train/)?grad_norm/(.+)$")
_TAP_KEY = re.compile(r"^tap_calls/(student|teacher)/(.+)$")


@dataclass(frozen=True)
class Check:
    """One finding: `status` is ok / warn / fail / no data / n/a; the evidence is where to look."""

    name: str
    status: str
    message: str
    page: str | None = None
    key: str | None = None
    epoch: int | None = None

    @property
    def flagged(self) -> bool:
        return self.status in FLAGGED

    def evidence(self) -> str:
        parts = [f"{self.page} page" if self.page else None, f"`{self.key}`" if self.key else None,
                 f"epoch {self.epoch}" if self.epoch is not None else None]
        return " · ".join(p for p in parts if p)


def flagged(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.flagged]


def run_health(run: Run) -> list[Check]:
    """Every check on one run, in a fixed order."""
    keys = run.scalar_keys()
    losses = {f"train/{m.group(1)}" for k in keys if (m := _GRAD_KEY.match(k))}  # the run's loss terms
    wanted = [k for k in keys if k.startswith(("val/", "train/distill", "train/term/", "train/loss"))
              or k in losses or _GRAD_KEY.match(k) or _TAP_KEY.match(k)]
    scalars = run.scalars(keys=wanted) if wanted else pd.DataFrame(columns=["step", "epoch", "key", "value"])
    config = run.config()
    checks: list[Check] = []
    for check in (_teacher, _terms, _taps, _gradients, _weights, _progress):
        checks += check(run, scalars, config)
    return checks


# -- helpers -----------------------------------------------------------------------------------
def _series(scalars: pd.DataFrame, key: str) -> pd.DataFrame:
    return scalars[scalars["key"] == key].sort_values("step")


def _per_epoch_last(scalars: pd.DataFrame, key: str) -> pd.Series:
    return _series(scalars, key).groupby("epoch")["value"].last()


def _metric_key(scalars: pd.DataFrame, role: str) -> str | None:
    """The validation metric of a role: accuracy (classification) or mAP (detection)."""
    present = set(scalars["key"])
    for key in (f"val/{role}_acc", f"val/{role}_mAP"):
        if key in present:
            return key
    return None


# -- the checks --------------------------------------------------------------------------------
def _teacher(run: Run, scalars: pd.DataFrame, config: dict) -> list[Check]:
    if not config.get("teacher"):
        return [Check("teacher", NOT_APPLICABLE, "No teacher: a run trained from scratch.")]
    key = _metric_key(scalars, "teacher")
    if key is None:
        text = ("This run records no evaluation of its teacher (a soft-label bank stands in for it?)"
                if _metric_key(scalars, "student") else "The teacher has not been evaluated yet (after the first epoch)")
        return [Check("teacher", NO_DATA, text + ".", page="Curves")]
    values = _per_epoch_last(scalars, key)
    epoch, teacher = int(values.index[-1]), float(values.iloc[-1])
    checks = []
    if key.endswith("mAP"):
        at_chance, text = teacher < 0.01, f"The teacher's validation mAP is {teacher:.3f}"
    else:
        labels = run.instances("val", epoch=epoch, columns=["label"])["label"].dropna().astype(int)
        n = len(labels)
        classes = len(run.meta().get("class_names") or []) or max(int(labels.max()) + 1 if n else 1, 1)
        chance = float(labels.value_counts(normalize=True).max()) if n else 1.0 / classes
        if n:
            from scipy.stats import binomtest

            p = binomtest(int(round(teacher * n)), n, chance, alternative="greater").pvalue
        else:
            p = 0.0 if teacher > 1.5 / classes else 1.0
        at_chance = p > CHANCE_P_VALUE
        text = (f"The teacher's validation accuracy is {teacher:.3f} against {chance:.3f} by always "
                f"guessing the commonest class" + (f" (n={n}, p={p:.2g})" if n else ""))
    if at_chance:
        checks.append(Check("teacher", FAIL, f"{text}: it is no better than chance, so there is nothing "
                            "to distil (a broken checkpoint, shuffled weights, or the wrong data?).",
                            page="Curves", key=key, epoch=epoch))
    student_key = _metric_key(scalars, "student")
    if student_key is not None:
        student = float(_per_epoch_last(scalars, student_key).iloc[-1])
        if student - teacher > STUDENT_MARGIN:
            checks.append(Check("teacher", WARN, f"The teacher ({teacher:.3f}) is worse than the student "
                                f"({student:.3f}) on validation: the student learns from a weaker model.",
                                page="Curves", key=student_key, epoch=epoch))
    if not checks:
        checks.append(Check("teacher", OK, f"{text}: clearly better than chance and not worse than the student.",
                            page="Curves", key=key, epoch=epoch))
    return checks


def _term_names(config: dict) -> list[tuple[str, float, int]]:
    """(recorded name, weight, index) of the configured terms, named as `standard` names them."""
    out, seen = [], {}
    for index, term in enumerate((config.get("distill") or {}).get("terms") or []):
        loss = str(term.get("loss"))
        count = seen.get(loss, 0)
        seen[loss] = count + 1
        out.append((loss if count == 0 else f"{loss}_{count}", float(term.get("weight", 1.0)), index))
    return out


def _terms(run: Run, scalars: pd.DataFrame, config: dict) -> list[Check]:
    present = set(scalars["key"])
    # the combined and per-term distillation losses, and any other loss a method names in grad_norm/<loss>
    others = {f"train/{m.group(1)}" for k in present if (m := _GRAD_KEY.match(k)) and m.group(1) != "task"}
    keys = sorted(k for k in present if k == "train/distill" or k.startswith("train/term/") or k in others)
    checks = []
    for name, weight, index in _term_names(config):
        if weight == 0:
            checks.append(Check("distillation terms", FAIL, f"Term {name!r} has weight 0 "
                                f"(distill.terms.{index}.weight): it is computed but adds nothing to the loss.",
                                page="Curves", key=f"train/term/{name}"))
    if not keys:
        if not config.get("teacher"):
            return [Check("distillation terms", NOT_APPLICABLE, "No distillation terms: a run trained from scratch.")]
        return checks or [Check("distillation terms", NO_DATA, "No distillation loss recorded yet.", page="Curves")]
    for key in keys:
        series = _series(scalars, key)
        values = series["value"].to_numpy(dtype=float)
        bad = ~np.isfinite(values)
        if bad.any():
            first = series.iloc[int(np.argmax(bad))]
            checks.append(Check("distillation terms", FAIL, f"{key} is not finite (first at step {int(first.step)}).",
                                page="Curves", key=key, epoch=int(first.epoch)))
        elif np.all(np.abs(values) <= 1e-12):
            checks.append(Check("distillation terms", FAIL, f"{key} is exactly zero at every recorded step "
                                f"({len(values)}): the student gets nothing from the teacher through it.",
                                page="Curves", key=key))
        elif len(values) >= 5 and np.ptp(values) <= 1e-9 * max(1.0, abs(values.mean())):
            checks.append(Check("distillation terms", WARN, f"{key} is constant ({values[0]:.4g}) over "
                                f"{len(values)} steps: it gives no gradient signal.", page="Curves", key=key))
    if not checks:
        checks.append(Check("distillation terms", OK, f"{len(keys)} distillation loss(es) recorded, each "
                            "finite, non-zero and changing.", page="Curves", key=keys[0]))
    return checks


def _taps(run: Run, scalars: pd.DataFrame, config: dict) -> list[Check]:
    checks = []
    tap_keys = sorted(k for k in set(scalars["key"]) if _TAP_KEY.match(k))
    for key in tap_keys:
        calls = _per_epoch_last(scalars, key)
        dead = calls[calls <= 0]
        if len(dead):
            role, layer = _TAP_KEY.match(key).groups()
            checks.append(Check("feature taps", FAIL, f"The {role}'s feature tap on {layer!r} fired no hook "
                                f"in epoch {int(dead.index[0])}: the layer never runs in forward, so its "
                                "feature term compares nothing.", page="Curves", key=key, epoch=int(dead.index[0])))
    distilled = {(t.get("student_layer"), t.get("teacher_layer")) for t in
                 (config.get("distill") or {}).get("terms") or [] if t.get("student_layer")}
    recorded_pairs = (config.get("record") or {}).get("features") or []
    epochs_done = sorted(set(_series(scalars, _metric_key(scalars, "student") or "").epoch.astype(int)))
    if distilled and not recorded_pairs and epochs_done:
        features = run.features()
        for s_layer, t_layer in sorted(distilled, key=str):
            rows = features[features["student_layer"] == s_layer]
            if rows.empty and not any(c.key and c.key.endswith(f"/{s_layer}") for c in checks):
                checks.append(Check("feature taps", FAIL, f"The distilled layer {s_layer!r} has no recorded "
                                    f"teacher-student features after {len(epochs_done)} epoch(s): its tap "
                                    "captured nothing.", page="Features", key=s_layer, epoch=epochs_done[-1]))
    if checks:
        return checks
    if not tap_keys and not distilled:
        return [Check("feature taps", NOT_APPLICABLE, "No feature terms: nothing is tapped.")]
    if not tap_keys and not epochs_done:
        return [Check("feature taps", NO_DATA, "No epoch has finished yet.")]
    return [Check("feature taps", OK, "Every tapped layer produced features.", page="Features")]


def _gradients(run: Run, scalars: pd.DataFrame, config: dict) -> list[Check]:
    grads = {m.group(1): k for k in set(scalars["key"]) if (m := _GRAD_KEY.match(k))}
    if not config.get("teacher"):
        return [Check("gradient balance", NOT_APPLICABLE, "No distillation gradient: a run trained from scratch.")]
    if "task" not in grads or len(grads) < 2:
        return [Check("gradient balance", NO_DATA, "No per-loss gradient norms recorded (`grad_norm/<loss>`); "
                      "set record.grad_norms_every: N to record them every N steps.")]
    task = _series(scalars, grads["task"]).set_index("step")["value"]
    checks = []
    for loss, key in sorted(grads.items()):
        if loss == "task":
            continue
        joined = pd.concat([_series(scalars, key).set_index("step")["value"], task], axis=1,
                           keys=["g", "task"]).dropna().tail(GRAD_WINDOW)
        joined = joined[joined["task"] > 0]
        if joined.empty:
            continue
        ratio = float(np.median(joined["g"] / joined["task"]))
        epoch = int(_series(scalars, key)["epoch"].iloc[-1])
        text = f"the median ratio of {key} to the task gradient over the last {len(joined)} records is {ratio:.3g}"
        if ratio < GRAD_NEGLIGIBLE:
            checks.append(Check("gradient balance", WARN, f"The distillation gradient is negligible: {text}.",
                                page="Curves", key=key, epoch=epoch))
        elif ratio > GRAD_SWAMPS:
            checks.append(Check("gradient balance", WARN, f"The distillation gradient swamps the task: {text}.",
                                page="Curves", key=key, epoch=epoch))
        else:
            checks.append(Check("gradient balance", OK, f"Balanced: {text}.", page="Curves", key=key, epoch=epoch))
    return checks or [Check("gradient balance", NO_DATA, "The task gradient norm is zero at every record.")]


def _weights(run: Run, scalars: pd.DataFrame, config: dict) -> list[Check]:
    strategy = (config.get("weighting") or {}).get("strategy", "uniform")
    if not config.get("teacher"):
        return [Check("instance weights", NOT_APPLICABLE, "No instance weights: a run trained from scratch.")]
    if strategy == "uniform":
        return [Check("instance weights", NOT_APPLICABLE, "Uniform weighting: every weight is 1 by design.")]
    epochs = run.instance_epochs("train")
    if not epochs or "weight" not in run.instance_columns():
        return [Check("instance weights", NO_DATA, "No training instance weights recorded yet.", page="Instances")]
    weights = run.instances("train", epoch=epochs[-1], columns=["weight"])["weight"].dropna().to_numpy(float)
    if not len(weights):
        return [Check("instance weights", NO_DATA, f"The {strategy} weighting recorded no weights.", page="Instances")]
    near_one = float(np.mean(np.abs(weights - 1.0) <= COLLAPSE_TOL))
    near_zero = float(np.mean(np.abs(weights) <= COLLAPSE_TOL))
    where = dict(page="Instances", key="weight", epoch=epochs[-1])
    if near_one >= COLLAPSE_SHARE:
        return [Check("instance weights", WARN, f"The {strategy} weights have collapsed to 1 "
                      f"({near_one:.0%} of {len(weights)} instances): the weighting does nothing.", **where)]
    if near_zero >= COLLAPSE_SHARE:
        return [Check("instance weights", FAIL, f"The {strategy} weights have collapsed to 0 "
                      f"({near_zero:.0%} of {len(weights)} instances): distillation is switched off.", **where)]
    return [Check("instance weights", OK, f"The {strategy} weights spread from {weights.min():.3g} to "
                  f"{weights.max():.3g} (mean {weights.mean():.3g}).", **where)]


def _progress(run: Run, scalars: pd.DataFrame, config: dict) -> list[Check]:
    key = _metric_key(scalars, "student")
    values = _per_epoch_last(scalars, key) if key else pd.Series(dtype=float)
    if len(values) < 2:
        return [Check("validation progress", NO_DATA, f"Needs two validation passes, has {len(values)}.",
                      page="Curves", key=key)]
    span = float(values.max() - values.min())
    loss = _series(scalars, "train/loss").groupby("epoch")["value"].mean()
    fell = len(loss) >= 2 and math.isfinite(loss.iloc[0]) and loss.iloc[-1] < loss.iloc[0] * (1 - LOSS_FALL)
    change = (loss.iloc[-1] / loss.iloc[0] - 1) if len(loss) >= 2 and loss.iloc[0] else float("nan")
    name = key.split("/", 1)[1]
    if span < FLAT_TOL:
        tail = (f"while the training loss fell {-change:.0%}: the student fits the training data without "
                "generalising" if fell else
                f"and the training loss barely moved ({change:+.1%}): the learning rate may be too small")
        return [Check("validation progress", WARN, f"Validation {name} stayed within {span:.3f} over "
                      f"{len(values)} evaluations ({values.iloc[-1]:.3f}) {tail}.", page="Curves", key=key,
                      epoch=int(values.index[-1]))]
    return [Check("validation progress", OK, f"Validation {name} moved from {values.iloc[0]:.3f} to "
                  f"{values.iloc[-1]:.3f} over {len(values)} evaluations.", page="Curves", key=key,
                  epoch=int(values.index[-1]))]
