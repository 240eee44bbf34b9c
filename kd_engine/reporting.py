"""The verdict in words, shared by the notebooks: a row of ``experiment.summarize`` turned into
"<what>: +0.0123 ± 0.0045 (threshold 0.0090; resolved, higher)" and the tests the notebooks' claims
use (a resolved gain, a resolved loss). No number is typed by hand: everything comes from the row."""
from __future__ import annotations

import pandas as pd


def arm_row(summary: pd.DataFrame, arm: str) -> pd.Series:
    """The row of ``arm`` in a ``summarize`` table."""
    return summary.set_index("arm").loc[arm]


def resolved_gain(summary: pd.DataFrame, arm: str) -> bool:
    """The paired difference of ``arm`` to the baseline is resolved and positive."""
    r = arm_row(summary, arm)
    return bool(r["verdict"] == "resolved" and r["diff_mean"] > 0)


def resolved_loss(summary: pd.DataFrame, arm: str) -> bool:
    """The paired difference of ``arm`` to the baseline is resolved and negative."""
    r = arm_row(summary, arm)
    return bool(r["verdict"] == "resolved" and r["diff_mean"] < 0)


def describe(summary: pd.DataFrame, arm: str, what: str, words: tuple[str, str] = ("higher", "lower"),
             lower_is_better: bool = False, threshold: bool = True) -> str:
    """``what``: the paired difference of ``arm`` to the baseline, its spread and verdict in words.

    ``words`` name a resolved difference in the good and the bad direction (the good one is a
    positive difference unless ``lower_is_better``); one seed gives no verdict."""
    r = arm_row(summary, arm)
    if int(r["n"]) < 2:
        return f"{what}: {r['diff_mean']:+.4f} on one seed (no verdict possible)"
    if r["verdict"] == "resolved":
        good = (r["diff_mean"] < 0) == lower_is_better
        word = f"resolved, {words[0] if good else words[1]}"
    else:
        word = "within noise"
    limit = f"threshold {r['threshold']:.4f}; " if threshold else ""
    return f"{what}: {r['diff_mean']:+.4f} ± {r['diff_std']:.4f} ({limit}{word})"
