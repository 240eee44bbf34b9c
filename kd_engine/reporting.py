"""The verdict in words, shared by the notebooks: a row of ``experiment.summarize`` turned into
"<what>: +0.0123 ± 0.0045 (threshold 0.0090; resolved, higher)", and the claim verdict a notebook
states about a paper's claim ("holds", "contradicted" or "not shown"). No number is typed by hand:
everything comes from the row."""
from __future__ import annotations

import pandas as pd


def arm_row(summary: pd.DataFrame, arm: str) -> pd.Series:
    """The row of ``arm`` in a ``summarize`` table."""
    return summary.set_index("arm").loc[arm]


CLAIMS = ("holds", "contradicted", "not shown")


def claim(summary: pd.DataFrame, arm: str, lower_is_better: bool = False) -> str:
    """The claim "``arm`` beats the baseline" against this summary: "holds" when the paired
    difference is resolved in the good direction, "contradicted" when it is resolved in the other,
    "not shown" when it is within noise (which includes a single seed: no verdict possible)."""
    r = arm_row(summary, arm)
    if int(r["n"]) < 2 or r["verdict"] != "resolved":
        return "not shown"
    return "holds" if (r["diff_mean"] < 0) == lower_is_better else "contradicted"


def claims(summaries: dict[str, pd.DataFrame], arm: str, lower_is_better: bool = False) -> dict[str, list[str]]:
    """``claim`` of ``arm`` against several baselines (``{baseline: summary}``), grouped by verdict:
    ``{"holds": [...], "contradicted": [...], "not shown": [...]}`` in the summaries' order."""
    out: dict[str, list[str]] = {c: [] for c in CLAIMS}
    for baseline, summary in summaries.items():
        out[claim(summary, arm, lower_is_better)].append(baseline)
    return out


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
