# %% [markdown]
# # WAD: weight-aware distillation under class-distribution mismatch, in miniature (paper 21 of the ICCV 2023 list)
#
# **The method.** WAD (ICCV 2023) is semi-supervised learning when the unlabelled data contain
# classes the task does not know. A contrastive (SimCLR) teacher, trained without labels, gives
# every unlabelled image x a similarity to each class's labelled exemplars,
# s_c(x) = Σ_shift max_{l ∈ L_c} cos(z(x), z(l)); the pseudo-label is ŷ = argmax_c s_c and the
# weight is the top-2 margin w = s_(1) − s_(2), so images that resemble no class in particular
# (often the unknown ones) count less. The student minimises
# CE(f(x_l), y_l) + mean_u w_u·CE(f(x_u), ŷ_u); optionally, in rounds, the pseudo-labelled images
# with the lowest student CE are promoted into the labelled set. The paper frames w as pointwise
# mutual information; that equivalence is our *inference* (a reconstruction, not used
# here). In the engine: `method: wad` (`kd_engine/methods/wad.py`), the SimCLR trainer
# `kd_engine/parts/simclr.py` and the dataset `digits_mismatch`.
#
# **The miniature** (`configs/wad_digits.yaml`): digits; known classes 0–4 with 10 labels each;
# the unlabelled pool holds 300 other known-class training images plus
# ⌈m·300/(1 − m)⌉ images of the unknown digits 5–9 (mismatch m ∈ {0.3, 0.6}); validation and
# test hold digits 0–4 only. Teacher: SimCLR on an MLP 64–128–64 (±1 px shift, noise σ = 0.1,
# pixel dropout 0.1; NT-Xent τ = 0.5; 100 full-batch Adam epochs), cached per seed and
# mismatch; similarities sum over the 9 shifts of ±1 px. Student: MLP 64–128–5, Adam 5e-4, 40
# epochs of batch 64 over the training pool, each step with a draw of 32 labelled images. The
# known/unknown truth is read only to be recorded and measured.
#
# **Arms** (per mismatch m; all on the same seeds, which fix the split, the labelled draw, the
# teacher and the student's initialisation):
#
# * `supervised`: labelled images only (w = 0): **the baseline**;
# * `unweighted`: pseudo-labels from the same teacher with w = 1;
# * `wad`: pseudo-labels weighted by the margin w;
# * `wad_rounds`: WAD with 4 rounds (3 promotions of α_r·|U| images, α = 0.1 decaying with power 2).
#
# **Claims to test (the paper's):** unknown (OOD) images get lower w (AUROC of w for known vs unknown
# > 0.5); WAD beats unweighted pseudo-labels, by more at higher mismatch; WAD ≥ supervised.
#
# **Budgets.** `smoke`: 1 seed, 2 epochs, a 5-epoch teacher (plumbing check; no verdict).
# `full`: 5 seeds, the config's epochs; its wall time is measured below.

# %% tags=["parameters"]
budget = "smoke"      # "smoke": 1 seed, 2 epochs (plumbing check); "full": 5 seeds, the config's epochs
results_path = None   # where `kdw reproduce` wants the results JSON (None: nothing is written)
work_dir = None       # runs and the SimCLR cache go here (None: a fresh temporary directory)

# %%
from functools import partial
from types import SimpleNamespace

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import yaml
from IPython.display import Markdown, display

from kd_engine import reporting
from kd_engine.data import build_data
from kd_engine.experiment import format_summary, setup, summarize
from kd_engine.metrics_extra import auroc
from kd_engine.store import open_run
from workbench.figures import arm_comparison, arm_distributions, paired_differences

ctx = setup("p21_wad", "configs/wad_digits.yaml", budget, seeds=5, work_dir=work_dir)
seeds, base = ctx.seeds, ctx.base
if budget == "smoke":
    base["distill"]["params"]["simclr_epochs"] = 5
print(f"SimCLR epochs {base['distill']['params']['simclr_epochs']}")

# %% [markdown]
# ## 1. The data, the config and the arms

# %%
MISMATCH = [0.3, 0.6]
for m in MISMATCH:
    d = build_data(SimpleNamespace(**{**base["data"], "params": {**base["data"]["params"], "mismatch": m}}), seeds[0])
    known = np.asarray(d.meta["truth"]["known"])[d.train.y.numpy() < 0]
    print(f"m={m}: {d.meta['n_labelled']} labelled, {len(known)} unlabelled "
          f"({int(known.sum())} known, {int((known == 0).sum())} unknown), {len(d.test)} test images")
print(yaml.safe_dump({k: base[k] for k in ("student", "distill", "optimizer", "epochs")}, sort_keys=False))
BASE_ARMS = {"supervised": {"distill.params.weighting": "none"},
             "unweighted": {"distill.params.weighting": "uniform"},
             "wad": {},
             "wad_rounds": {"distill.params.rounds": 4}}
arms = {f"{name}@m{m}": {**overrides, "data.params.mismatch": m}
        for m in MISMATCH for name, overrides in BASE_ARMS.items()}
for name, overrides in arms.items():
    print(f"{name:<17} {overrides}")

# %%
frame = ctx.run_arms(arms)
frame["method"] = frame["arm"].str.split("@").str[0]
frame["m"] = frame["arm"].str.split("@m").str[1].astype(float)
print(f"{len(frame)} runs in {frame['wall_s'].sum():.0f} s (the first run of each seed and m also "
      "trains its SimCLR teacher)")

# %% [markdown]
# ## 2. The teacher's weights: do unknown images get lower w?
#
# From each `wad` run's first-epoch records of the unlabelled pool: the margin `wad_weight`
# against the recorded truth `known_truth`. AUROC = 1: every known image outweighs every unknown
# one; 0.5: chance. The pseudo-label accuracy on the known unlabelled images uses the true digit
# from the dataset's measurement-only truth table.

# %%
def teacher_rows(run):
    rows = open_run(run.run_dir).instances(split="train", epoch=0,
                                           columns=["instance_id", "label", "wad_weight", "pseudo_label", "known_truth"])
    rows = rows[rows["label"] < 0].drop_duplicates("instance_id")
    d = build_data(SimpleNamespace(**{**base["data"], "params": {**base["data"]["params"], "mismatch": run.m}}), run.seed)
    digit = pd.Series(d.meta["truth"]["digit"], index=d.meta["truth"]["instance_id"])
    return rows.assign(digit=digit.loc[rows["instance_id"]].to_numpy(), seed=run.seed, m=run.m)


teacher = pd.concat([teacher_rows(r) for r in frame[frame["method"] == "wad"].itertuples()], ignore_index=True)
teacher["truth"] = np.where(teacher["known_truth"] > 0, "known (ID)", "unknown (OOD)")
stats = []
for (m, seed), part in teacher.groupby(["m", "seed"]):
    known = part[part["known_truth"] > 0]
    stats.append({"m": m, "seed": seed, "auroc": auroc(part["known_truth"], part["wad_weight"]),
                  "pseudo_acc_known": float((known["pseudo_label"] == known["digit"]).mean())})
stats = pd.DataFrame(stats)
display(stats)
AUROC = "train/weight_auroc_known_vs_unknown"
auroc_frame = pd.concat([stats.assign(arm=f"wad_weight@m{m}", **{AUROC: stats["auroc"]})[lambda f: f["m"] == m]
                         for m in MISMATCH]
                        + [pd.DataFrame({"arm": "chance", "seed": seeds, AUROC: 0.5})], ignore_index=True)
auroc_summary = summarize(auroc_frame, AUROC, baseline="chance")
display(Markdown("**AUROC of the WAD weight (known vs unknown) against chance 0.5**"), format_summary(auroc_summary))
for m in MISMATCH:
    arm_distributions(teacher[(teacher["m"] == m)], "wad_weight", group_col="truth",
                      title=f"WAD weight w (top-2 similarity margin) of unlabelled images, m={m}, all seeds").show()

# %% [markdown]
# ## 3. What the promotion rounds admitted
#
# The unknown share of the images promoted into the labelled set by `wad_rounds` (promotion by
# lowest student CE can admit confidently wrong unknown images: a known trap), next to
# the unknown share of the pool.

# %%
promoted = []
for run in frame[frame["method"] == "wad_rounds"].itertuples():
    rows = open_run(run.run_dir).instances(split="train", columns=["instance_id", "epoch", "promoted", "known_truth"])
    last = rows[rows["epoch"] == rows["epoch"].max()].drop_duplicates("instance_id")
    chosen = last[last["promoted"] > 0]
    promoted.append({"m": run.m, "seed": run.seed, "promoted": len(chosen),
                     "unknown_share_promoted": float((chosen["known_truth"] == 0).mean()) if len(chosen) else np.nan,
                     "unknown_share_pool": run.m})
promoted = pd.DataFrame(promoted)
display(promoted.groupby("m")[["promoted", "unknown_share_promoted", "unknown_share_pool"]].mean())

# %% [markdown]
# ## 4. Results: test accuracy on the known classes
#
# **Reporting rule.** Each arm: mean ± std (n−1) over seeds. Against a baseline: the per-seed
# paired difference, mean ± std; *resolved* only if |mean diff| > 2·std/√n, otherwise *within
# noise*. Per mismatch: every arm against `supervised`, and `wad` against `unweighted`. The
# "by more at higher mismatch" claim is the per-seed gap (wad − unweighted) at m = 0.6 paired
# against the gap at m = 0.3.

# %%
ACC = "test/student_acc"
by_m = {m: summarize(frame[frame["m"] == m], ACC, baseline=f"supervised@m{m}") for m in MISMATCH}
wad_vs_unw = {m: summarize(frame[frame["arm"].isin([f"unweighted@m{m}", f"wad@m{m}"])], ACC,
                           baseline=f"unweighted@m{m}") for m in MISMATCH}
for m in MISMATCH:
    display(Markdown(f"**Test accuracy, m = {m}** (baseline `supervised@m{m}`)"), format_summary(by_m[m]))
    display(Markdown(f"**WAD vs unweighted, m = {m}**"), format_summary(wad_vs_unw[m]))
pivot = frame.pivot_table(index="seed", columns="arm", values=ACC)
GAP = "test/acc_gap_wad_minus_unweighted"
gaps = pd.concat([pd.DataFrame({"arm": f"gap@m{m}", "seed": pivot.index,
                                GAP: (pivot[f"wad@m{m}"] - pivot[f"unweighted@m{m}"]).to_numpy()}) for m in MISMATCH],
                 ignore_index=True)
gap_summary = summarize(gaps, GAP, baseline=f"gap@m{MISMATCH[0]}")
display(Markdown("**The gap wad − unweighted, m = 0.6 against m = 0.3**"), format_summary(gap_summary))

# %%
order = [f"{a}@m{m}" for m in MISMATCH for a in BASE_ARMS]
arm_comparison(frame, ACC, order=order,
               title=f"test accuracy on digits 0–4: mean ± std over {len(seeds)} seed(s), points = seeds").show()
for m in MISMATCH:
    paired_differences(frame[frame["m"] == m], f"supervised@m{m}", ACC,
                       order=[f"{a}@m{m}" for a in BASE_ARMS if a != "supervised"],
                       title=f"paired test-accuracy difference vs supervised, m={m} (band: mean ± 2·std/√n)").show()
fig = go.Figure()
for name in BASE_ARMS:
    part = frame[frame["method"] == name].groupby("m")[ACC]
    fig.add_scatter(x=part.mean().index.tolist(), y=part.mean().tolist(), mode="lines+markers", name=name,
                    error_y={"type": "data", "array": part.std().fillna(0).tolist()})
fig.update_layout(title="test accuracy against mismatch (mean ± std over seeds)", xaxis_title="mismatch m",
                  yaxis_title=ACC, template="plotly_white").show()

# %% [markdown]
# ## 5. Verdict in words

# %%
describe = partial(reporting.describe, threshold=False)

n = len(seeds)
lines = [describe(auroc_summary, f"wad_weight@m{m}", f"AUROC of w − 0.5 at m={m}") for m in MISMATCH]
for m in MISMATCH:
    lines += [describe(by_m[m], f"{a}@m{m}", f"{a} − supervised at m={m}") for a in BASE_ARMS if a != "supervised"]
    lines.append(describe(wad_vs_unw[m], f"wad@m{m}", f"wad − unweighted at m={m}"))
lines.append(describe(gap_summary, f"gap@m{MISMATCH[1]}", "(wad − unweighted) at m=0.6 minus at m=0.3"))
if n < 2:
    claim = f"Only {n} seed at the `{budget}` budget: no verdict is possible. Run the full budget."
else:
    def status(pairs, at_least=False):
        """'holds' if every (summary, arm) shows the claimed gain (or, with at_least, no resolved
        loss), 'contradicted' if any shows a resolved loss, else 'not shown'."""
        verdicts = [reporting.claim(s, a) for s, a in pairs]
        if "contradicted" in verdicts:
            return "contradicted"
        return "holds" if at_least or all(v == "holds" for v in verdicts) else "not shown"

    checks = [("unknown images get lower w (AUROC > 0.5 at both m)",
               status([(auroc_summary, f"wad_weight@m{m}") for m in MISMATCH])),
              ("WAD beats unweighted pseudo-labels at m=0.6", status([(wad_vs_unw[0.6], "wad@m0.6")])),
              ("... by more at higher mismatch", status([(gap_summary, "gap@m0.6")])),
              ("WAD ≥ supervised at both m", status([(by_m[m], f"wad@m{m}") for m in MISMATCH], at_least=True))]
    claim = " ".join(f"Claim '{c}': {ok}." for c, ok in checks)
means = frame.groupby("arm")[ACC].mean()
n_test = len(open_run(frame["run_dir"].iloc[0]).instances(split="test", columns=["instance_id"]))
share = promoted.groupby("m")["unknown_share_promoted"].mean()
verdict_text = (f"Over {n} seed(s): " + "; ".join(lines) + ". " + claim
                + " Mean test accuracy: " + ", ".join(f"{a} {means[a]:.4f}" for a in order) + "."
                + " Unknown share of promoted images (wad_rounds): "
                + ", ".join(f"m={m}: {share.get(m, float('nan')):.3f}" for m in MISMATCH)
                + f". Pseudo-label accuracy on known unlabelled images: "
                + ", ".join(f"m={m}: {v:.3f}" for m, v in stats.groupby("m")["pseudo_acc_known"].mean().items())
                + f". The test split has {n_test} images of digits 0–4 (one image is {1 / n_test:.4f} of accuracy).")
display(Markdown(verdict_text))

# %% [markdown]
# ## 6. Save the results

# %%
ctx.save(results_path,
         [(auroc_summary, "chance")] + [(by_m[m], f"supervised@m{m}") for m in MISMATCH]
         + [(wad_vs_unw[m], f"unweighted@m{m}") for m in MISMATCH] + [(gap_summary, "gap@m0.3")],
         title="WAD (paper 21): SimCLR-exemplar pseudo-labels weighted by the top-2 margin, "
               "digits 0–4 with unknown digits 5–9 in the unlabelled pool",
         notes=verdict_text.replace("**", ""))
wall = ctx.wall_s
print(f"budget {budget}: {len(seeds)} seed(s), {len(frame)} runs in {wall:.0f} s")
