# %% [markdown]
# # AID, the extra arms: α sweep, cross-fitted teachers, the student-features ablation, self-distillation
#
# The companion of `notebooks/aid.ipynb` (read it first: it explains AID, the scenes, the FCOS
# pair and the two settings). The main notebook runs the comparison at the paper's α = 0.1;
# this one asks what the weights do around it, on the single-stage pair (FCOS) with the same
# models, data, schedules and label noise (`kd_engine/aid_experiment.py` builds both):
#
# 1. **α sweep** (noisy labels, disjoint teacher): `base` and AID at α = 0.1 (`aid`, the main
#    notebook's arm), 1 and 3. With
#    α = 0.1 the weights stay close to 1 whatever the teacher's loss; larger α spreads them. Per
#    α: mAP against base, the weight spread, and the AUROC of 1 − w against the corrupted images.
#    The AUROC only ranks images by weight, and exp(−α·L) keeps the order of the teacher's
#    losses for every α, so it barely moves with α (only the mean over FPN levels can reorder
#    two images): α sets how hard the ranking is acted on, not the ranking.
# 2. **Cross-fitted teachers** (`teacher.cross_fit: 2`): two teachers, each trained on the
#    students' own training images without one fold (image id mod 2), and each image scored by
#    the teacher that never saw it. Unlike the disjoint teacher, the two together saw the very
#    scenes the student trains on, with the same noisy labels: cross-fitting uses the run's own
#    data, which is the point of it when that data is all one has. Each trains as many steps as
#    the disjoint teacher on a quarter of its images (256 noisy ones against 1024 clean ones),
#    so expect weaker teachers (`docs/aid_levers.md` records their mAP). Arms `xfit_base` and
#    `xfit_aid_a1` (α = 1) in the noisy setting, against the disjoint teacher's α = 1 arm: mAP
#    against their own base, weight spread and AUROC.
# 3. **Where the teacher's loss is computed** (`teacher_loss_source: student_features`, the form
#    of AID's official code, as a labelled ablation): the teacher's heads grade the *student's*
#    FPN maps, so the weight follows what the student gets wrong rather than the teacher. α = 1.
# 4. **Self-distillation** (clean labels): the student has the teacher's size; `self_base` and
#    `self_aid` (α = 0.1).
#
# **Reporting rule** (`docs/NOTEBOOKS.md`): mean ± std (n−1) over seeds, paired differences,
# **resolved** only if |mean diff| > 2·std/√n, otherwise **within noise**.
#
# **Budgets.** `smoke` (CI): 1 seed, tiny scenes, a plumbing check with no verdict. `full`
# (2-core CPU): 3 seeds and the main notebook's FCOS setting (96-px scenes, 512 training images,
# 1152 student steps); its wall time is recorded in the results. `gpu`: the reference setting.
# Finished arms are reused and interrupted ones resumed (`kdw reproduce` keeps its work folder).
# This notebook works in the main notebook's folder, so the disjoint teacher and the noisy
# `base` and `aid` arms, which both notebooks run with the same config, train only once.

# %% tags=["parameters"]
budget = "smoke"      # "smoke" (CI plumbing check), "full" (2-core CPU) or "gpu" (reference setting)
results_path = None   # where `kdw reproduce` wants the results JSON (None: nothing is written)
work_dir = None       # runs and the teacher cache go here (None: a fresh temporary directory)

# %%
import time
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

from kd_engine.arm_runs import describe_reuse
from kd_engine.experiment import budget_settings, format_summary, prepare_teachers, run_jobs, save_results, summarize, work_dirs
from kd_engine.store import open_run
from kd_engine.aid_experiment import UNIFORM, aid_arm, noisy, pair_config, per_image
from kd_engine.weighting.aid_report import auroc_verdict, bootstrap_auroc, noise_auroc, weight_spread
from workbench.figures import arm_distributions

MAP, AP50 = "test/student_mAP", "test/student_AP50"
ALPHAS = [0.1, 1.0, 3.0]
# the α = 0.1 arm is the main notebook's `aid` arm (same name, same config), so it is reused from there
ALPHA_ARM = {a: "aid" if a == 0.1 else f"aid_a{a:g}" for a in ALPHAS}

started = time.perf_counter()
settings = {**budget_settings("full", seeds=5), "budget": "gpu"} if budget == "gpu" else budget_settings(budget, seeds=3)
seeds = settings["seeds"]
WORKERS = 2 if budget == "full" else 1
# the main notebook's work folder (`kdw reproduce` puts it next to this one): its disjoint teacher and
# the two arms both notebooks run (noisy labels: base, and AID at α = 0.1) train once and are reused
# here, since a finished run with the same config is never retrained
shared = Path(work_dir).parent / "aid" if work_dir else None
work, runs_dir, cache_dir = work_dirs(shared, "aid-extra")
base = pair_config("fcos", budget, settings)
NOISY = noisy(base)
# the cross-fitted teachers train as many steps as the disjoint one, on half the students' images
fold_epochs = round(base["teacher"]["train"]["epochs"] * base["teacher"]["data"]["params"]["n_train"]
                    / (base["data"]["params"]["n_train"] // 2))
CROSS_FIT = {"teacher.data": None, "teacher.cross_fit": 2, "teacher.train.epochs": fold_epochs}
SELF = {"student.params": dict(base["teacher"]["params"])}
arms = {"base": {**UNIFORM, **NOISY},
        **{ALPHA_ARM[a]: {**aid_arm(a), **NOISY} for a in ALPHAS},
        "xfit_base": {**UNIFORM, **NOISY, **CROSS_FIT},
        "xfit_aid_a1": {**aid_arm(1.0), **NOISY, **CROSS_FIT},
        "sf_aid_a1": {**aid_arm(1.0), **NOISY, "distill.params.teacher_loss_source": "student_features"},
        "self_base": {**UNIFORM, **SELF},
        "self_aid": {**aid_arm(0.1), **SELF}}
print(f"budget {budget}: seeds {seeds}; FCOS student {base['student']['params']} x {base['epochs']} epochs; "
      f"runs: {runs_dir}")

# %% [markdown]
# ## 1. Teachers and arms
#
# The disjoint teacher trains once; the two cross-fitted teachers train once each (in the first
# cross-fitted run). Then every arm at every seed, two at a time at the `full` budget.

# %%
teachers = prepare_teachers(base, seeds[:1], runs_dir, cache_dir)
jobs = [(base, arm, over, seed) for seed in seeds for arm, over in arms.items()]
jobs.sort(key=lambda job: not job[1].startswith(("self", "xfit")))  # the slowest first
frame = run_jobs(jobs, runs_dir, cache_dir, verbose=False, workers=WORKERS)
print(describe_reuse(frame.to_dict("records")))
display(frame.pivot_table(index="arm", columns="seed", values=MAP))

# %% [markdown]
# ## 2. mAP against base distillation

# %%
summaries, tables = [], {}
groups = {"base": ["base", *ALPHA_ARM.values(), "sf_aid_a1"],
          "xfit_base": ["xfit_base", "xfit_aid_a1"], "self_base": ["self_base", "self_aid"]}
for baseline, members in groups.items():
    for metric in (MAP, AP50):
        s = summarize(frame[frame["arm"].isin(members)], metric, baseline=baseline)
        summaries.append((s, baseline))
        tables[(baseline, metric)] = s.set_index("arm")
        display(Markdown(f"**{metric}, paired against `{baseline}`**"), format_summary(s))

# %% [markdown]
# ## 3. The weights: spread and whether low weight finds the corrupted images
#
# Per arm and seed, last epoch: one weight per image (the mean over FPN levels of AID's own
# weight), its spread, and the AUROC of 1 − w against "this image has a corrupted annotation"
# (0.5 = chance; the corrupted labels are the student's, so the self-distillation arms, trained
# on clean labels, have none).

# %%
WEIGHTED = [*ALPHA_ARM.values(), "xfit_aid_a1", "sf_aid_a1"]
rows = []
for arm in WEIGHTED:
    for seed in seeds:
        run_dir = frame[(frame["arm"] == arm) & (frame["seed"] == seed)]["run_dir"].iloc[0]
        auroc = noise_auroc(open_run(run_dir).instances(split="train"))
        rows.append({"arm": arm, "seed": seed, **weight_spread(per_image(run_dir)["w"]),
                     "auroc_last_epoch": float(auroc["auroc_image"].iloc[-1])})
weights = pd.DataFrame(rows)
display(weights)
spread_summaries = []
for arm, part in weights.groupby("arm", sort=False):
    n = len(part)
    spread_summaries.append(pd.DataFrame([{
        "arm": arm, "metric": f"train/aid_weight_{stat}", "mean": float(part[stat].mean()),
        "std": float(part[stat].std(ddof=1)) if n > 1 else float("nan"), "n": n, "diff_mean": None,
        "diff_std": None, "verdict": "descriptive"} for stat in ("mean", "std", "p5", "p95")]))
summaries += [(s, None) for s in spread_summaries]
# judged on the images, not the seeds: AID's weights do not change with the student's seed
# (the main notebook's section 5 says why); resolved if the bootstrap 95 % interval excludes 0.5
auroc_rows = []
for arm in WEIGHTED:
    frames = [per_image(frame[(frame["arm"] == arm) & (frame["seed"] == seed)]["run_dir"].iloc[0]) for seed in seeds]
    b = bootstrap_auroc(frames)
    auroc_rows.append({"arm": arm, "metric": "train/noise_auroc_image", "mean": b["mean"], "std": b["std"],
                       "n": len(seeds), "diff_mean": b["mean"] - 0.5, "diff_std": b["std"],
                       "verdict": auroc_verdict(b), "lo": b["lo"], "hi": b["hi"]})
auroc_summary = pd.DataFrame(auroc_rows)
summaries.append((auroc_summary, "chance"))
display(Markdown("**AUROC of 1 − w against the corrupted images (last epoch) against chance 0.5, with its "
                 "bootstrap 95 % interval over the images**"), auroc_summary)
first = pd.concat([per_image(frame[(frame["arm"] == arm) & (frame["seed"] == seeds[0])]["run_dir"].iloc[0])
                   .assign(arm=arm) for arm in WEIGHTED], ignore_index=True)
arm_distributions(first, "w", group_col="arm", title=f"AID weights per image, seed {seeds[0]}, last epoch").show()

# %% [markdown]
# ## 4. Verdict in words

# %%
def said(baseline, arm):
    r = tables[(baseline, MAP)].loc[arm]
    return f"{arm} {r['diff_mean']:+.4f}" + (" (one seed)" if int(r["n"]) < 2 else f" ± {r['diff_std']:.4f} ({r['verdict']})")


a = auroc_summary.set_index("arm")
spread = weights.groupby("arm", sort=False)[["mean", "std", "p5", "p95"]].mean()
lines = [
    "α sweep (noisy labels, mAP vs base): " + "; ".join(said("base", ALPHA_ARM[x]) for x in ALPHAS) + ".",
    "Weights per image (mean over seeds of mean / std / p5 / p95): " + "; ".join(
        f"{arm} {r['mean']:.3f} / {r['std']:.3f} / {r['p5']:.3f} / {r['p95']:.3f}" for arm, r in spread.iterrows()) + ".",
    "AUROC of 1 − w against the corrupted images: " + "; ".join(
        f"{arm} {r['mean']:.3f} (interval {r['lo']:.3f}–{r['hi']:.3f}, {r['verdict']} vs chance)" for arm, r in a.iterrows()) + ".",
    "Cross-fitted teachers (α = 1): " + said("xfit_base", "xfit_aid_a1") + " against their own base.",
    "Student-features ablation (α = 1): " + said("base", "sf_aid_a1") + ".",
    "Self-distillation (clean labels): " + said("self_base", "self_aid") + ".",
]
head = (f"Only {len(seeds)} seed at the `{budget}` budget: no verdict is possible; this run checks the plumbing only."
        if len(seeds) < 2 else f"Over {len(seeds)} paired seeds at the `{budget}` budget (FCOS, a reproduction in miniature).")
verdict_text = " ".join([head, *lines])
display(Markdown(verdict_text))

# %%
wall = time.perf_counter() - started
save_results(results_path, "aid_extra", summaries, budget, seeds, wall,
             title="AID, the extra arms: α sweep, cross-fitted teachers, student-features ablation and "
                   "self-distillation (FCOS, traffic scenes)",
             notes=verdict_text.replace("**", "").replace("`", "") + f" Wall time {wall:.0f} s on this machine.")
print(f"budget {budget}: {len(frame)} runs in {wall:.0f} s")
